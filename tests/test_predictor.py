"""Predictor and embedding cache: shapes, validation, cache hits/corruption, coordinate mapping."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samsp.errors import InputImageError, SamspError
from napari_samsp.predictor import EmbeddingCache, Prediction, Predictor, PromptError, default_cache_root, image_key

H, W = 97, 203  # deliberately non-square and odd


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    return {
        "gray_u8": gray,
        "rgb_u8": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "rgba_u8": rng.integers(0, 256, (H, W, 4), dtype=np.uint8),
        "gray_u16": rng.integers(0, 65535, (H, W), dtype=np.uint16),
        "gray_f32": rng.normal(size=(H, W)).astype(np.float32),
        "rgb_f32": rng.random((H, W, 3)).astype(np.float32),
        "gray_1ch": gray[..., None],
        "bool": gray > 128,
    }


def _count_encode(model) -> list[int]:
    calls = [0]
    original = model.encode

    def counting(images):
        calls[0] += 1
        return original(images)

    model.encode = counting  # instance attribute shadows the method
    return calls


@pytest.mark.parametrize("name", list(_images()))
def test_shapes_and_dtypes_on_original_grid(micro_model, name):
    image = _images()[name]
    p = Predictor(micro_model, "micro-test")
    p.set_image(image)
    assert p.is_image_set and p.original_size == (H, W)
    assert p.image_rgb.shape == (H, W, 3) and p.image_rgb.dtype == np.uint8
    assert p.features.embeddings.shape == (1, 32, 16, 16)
    assert not p.features.embeddings.is_inference()  # usable by a differentiable decoder
    pred = p.predict(np.array([[150.0, 40.0]]), np.array([1]))
    assert isinstance(pred, Prediction)
    assert pred.masks.shape == (1, H, W) and pred.masks.dtype == bool
    assert pred.logits.shape == (1, 64, 64) and pred.logits.dtype == np.float32
    assert pred.scores.shape == (1,) and pred.scores.dtype == np.float32


@pytest.mark.parametrize(
    "bad",
    [
        np.full((20, 30), np.nan, np.float32),
        np.array([[1.0, np.inf], [0.0, 1.0]]),
        np.zeros((0, 30), np.uint8),
        np.zeros((2, 3, 4, 5, 6), np.uint8),  # 5D
        np.zeros((10,), np.uint8),  # 1D
        np.zeros((3, 32, 32), np.uint8),  # a stack: Predictor is 2D
        np.zeros((2, 32, 32, 3), np.uint8),  # an RGB stack
        np.array([["a", "b"], ["c", "d"]]),
    ],
)
def test_bad_images_raise_input_image_error(micro_model, bad):
    p = Predictor(micro_model, "micro-test")
    with pytest.raises(InputImageError):
        p.set_image(bad)
    assert not p.is_image_set


def test_rgb_flag(micro_model):
    p = Predictor(micro_model, "micro-test")
    # napari says the trailing 3 is not colour: this is a (Z=32, Y=32, X=3) stack
    with pytest.raises(InputImageError):
        p.set_image(np.zeros((32, 32, 3), np.uint8), rgb=False)
    p.set_image(np.zeros((32, 32, 3), np.uint8), rgb=True)
    assert p.original_size == (32, 32)


def test_predict_before_set_image(micro_model):
    p = Predictor(micro_model, "micro-test")
    with pytest.raises(SamspError):
        p.predict(np.array([[1, 1]]), np.array([1]))
    with pytest.raises(SamspError):
        _ = p.features


def test_cache_hit_on_disk_with_fresh_predictor(micro_model, tmp_path):
    image = _images()["gray_u16"]
    p1 = Predictor(micro_model, "micro-test", EmbeddingCache(tmp_path))
    p1.set_image(image)
    assert p1.last_embed_was_cached is False
    ref = p1.predict(np.array([[60.0, 50.0]]), np.array([1]))

    calls = _count_encode(micro_model)
    p2 = Predictor(micro_model, "micro-test", EmbeddingCache(tmp_path))  # fresh memory, same folder
    p2.set_image(image.copy())
    assert p2.last_embed_was_cached is True
    assert calls[0] == 0
    assert torch.equal(p2.features.embeddings, p1.features.embeddings)
    again = p2.predict(np.array([[60.0, 50.0]]), np.array([1]))
    np.testing.assert_array_equal(again.masks, ref.masks)
    np.testing.assert_array_equal(again.logits, ref.logits)

    # another model id is a miss
    p3 = Predictor(micro_model, "micro-other", EmbeddingCache(tmp_path))
    p3.set_image(image)
    assert p3.last_embed_was_cached is False and calls[0] == 1


def test_memory_only_cache(micro_model):
    calls = _count_encode(micro_model)
    p = Predictor(micro_model, "micro-test")  # private memory-only cache
    a, b = _images()["gray_u8"], _images()["rgb_u8"]
    p.set_image(a)
    p.set_image(b)
    p.set_image(a)
    assert p.last_embed_was_cached is True and calls[0] == 2
    assert p.cache.root is None


def test_lru_evicts(micro_model):
    cache = EmbeddingCache(None, max_memory_entries=2)
    calls = _count_encode(micro_model)
    p = Predictor(micro_model, "micro-test", cache)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (16, 16), dtype=np.uint8) for _ in range(3)]
    for im in imgs:
        p.set_image(im)
    p.set_image(imgs[0])  # evicted by the third
    assert p.last_embed_was_cached is False and calls[0] == 4


def _entry_files(cache: EmbeddingCache, model_id: str, key: str) -> list[Path]:
    path = cache.entry_path(model_id, key)
    return sorted(f for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("damage", ["garble_chunk", "delete_chunk", "garble_metadata", "truncate_chunk"])
def test_corrupt_entry_is_recomputed(micro_model, tmp_path, damage):
    image = _images()["rgb_u8"]
    cache = EmbeddingCache(tmp_path)
    p1 = Predictor(micro_model, "micro-test", cache)
    p1.set_image(image)
    key = p1.image_key
    files = _entry_files(cache, "micro-test", key)
    chunks = [f for f in files if f.name not in ("zarr.json", ".zarray", ".zgroup", ".zattrs")]
    metas = [f for f in files if f.name in ("zarr.json", ".zattrs")]
    assert chunks and metas
    if damage == "garble_chunk":
        data = bytearray(chunks[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        data[-1] ^= 0xFF
        chunks[0].write_bytes(bytes(data))
    elif damage == "delete_chunk":  # zarr would silently read fill values
        chunks[0].unlink()
    elif damage == "truncate_chunk":
        chunks[0].write_bytes(chunks[0].read_bytes()[:10])
    else:
        metas[0].write_text("{not json")

    calls = _count_encode(micro_model)
    p2 = Predictor(micro_model, "micro-test", EmbeddingCache(tmp_path))
    p2.set_image(image)
    assert p2.last_embed_was_cached is False
    assert calls[0] == 1
    torch.testing.assert_close(p2.features.embeddings, p1.features.embeddings)
    # the recomputed entry was written back and is good
    p3 = Predictor(micro_model, "micro-test", EmbeddingCache(tmp_path))
    p3.set_image(image)
    assert p3.last_embed_was_cached is True and calls[0] == 1


def test_killed_write_leaves_no_entry(micro_model, tmp_path, monkeypatch):
    import napari_samsp.predictor as predictor_mod

    real_write = predictor_mod._zarr_write_group

    def dies_halfway(path, arrays, attrs):
        real_write(path, {"embeddings": arrays["embeddings"][:1]}, {})  # half an entry...
        raise OSError("disk full")  # ...then the process "dies"

    monkeypatch.setattr(predictor_mod, "_zarr_write_group", dies_halfway)
    cache = EmbeddingCache(tmp_path)
    p = Predictor(micro_model, "micro-test", cache)
    image = _images()["gray_u8"]
    with pytest.warns(UserWarning, match="cannot write"):
        p.set_image(image)
    assert p.is_image_set
    path = cache.entry_path("micro-test", p.image_key)
    assert not path.exists()
    assert not any(c.name.startswith(".tmp-") for c in path.parent.iterdir())
    monkeypatch.setattr(predictor_mod, "_zarr_write_group", real_write)
    # a stray temp folder from a killed process is never read as an entry
    stray = path.parent / f".tmp-{p.image_key}-1-deadbeef"
    stray.mkdir()
    fresh = EmbeddingCache(tmp_path)
    assert fresh.get("micro-test", p.image_key) is None


def test_cache_key_includes_shape():
    data = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    assert image_key(data) != image_key(data.reshape(20, 10, 3))
    assert image_key(data) == image_key(data.copy())


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMSP_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    assert EmbeddingCache.default().root == tmp_path / "c"
    monkeypatch.setenv("SAMSP_CACHE", "off")
    assert default_cache_root() is None
    monkeypatch.delenv("SAMSP_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "napari-samsp" / "embeddings"


def test_hires_features_round_trip_through_disk(tmp_path):
    from napari_samsp.models import build_model

    torch.manual_seed(0)
    model = build_model("samunet_micro").eval()
    image = _images()["rgb_u8"]
    p1 = Predictor(model, "samunet", EmbeddingCache(tmp_path))
    p1.set_image(image)
    assert p1.features.hires is not None
    p2 = Predictor(model, "samunet", EmbeddingCache(tmp_path))
    p2.set_image(image)
    assert p2.last_embed_was_cached
    assert torch.equal(p2.features.hires, p1.features.hires)


# -- coordinates ----------------------------------------------------------------------


def test_coordinate_round_trip_non_square(micro_model):
    p = Predictor(micro_model, "micro-test")
    p.set_image(_images()["gray_u8"])
    t = p.transform
    h, w = t.resized_size
    assert max(h, w) == 128 and (h, w) == (61, 128)
    pts = np.array([[0.0, 0.0], [202.0, 96.0], [17.5, 80.25], [150.0, 40.0]], np.float32)
    inp = t.coords_to_input(pts)
    back = inp * np.array([W / w, H / h], np.float32)
    np.testing.assert_allclose(back, pts, rtol=1e-5, atol=1e-4)
    # the image centre maps to the centre of the resized (unpadded) region
    np.testing.assert_allclose(t.coords_to_input(np.array([W / 2, H / 2])), [w / 2, h / 2], rtol=1e-6)


def test_prompts_reach_decoder_in_input_frame(micro_model):
    p = Predictor(micro_model, "micro-test")
    p.set_image(_images()["rgb_u8"])
    seen = {}
    original = micro_model.decode

    def spy(features, **kw):
        seen.update(kw)
        return original(features, **kw)

    micro_model.decode = spy
    t = p.transform
    # point outside the image is clipped; box corners are swapped
    p.predict(np.array([[-5.0, 500.0], [150.0, 40.0]]), np.array([1, 0]), box=np.array([120, 90, 10, 5]))
    expected_pts = t.coords_to_input(np.array([[0.0, H - 1.0], [150.0, 40.0]]))
    np.testing.assert_allclose(seen["point_coords"].numpy()[0], expected_pts, rtol=1e-6)
    assert seen["point_labels"].tolist() == [[1, 0]]
    np.testing.assert_allclose(seen["boxes"].numpy()[0], t.boxes_to_input(np.array([10, 5, 120, 90])), rtol=1e-6)


def test_predict_prompt_kinds(micro_model):
    p = Predictor(micro_model, "micro-test")
    p.set_image(_images()["gray_f32"])
    by_box = p.predict(box=np.array([10, 10, 90, 60]))
    assert by_box.masks.shape == (1, H, W)
    multi = p.predict(np.array([[40, 30]]), np.array([1]), multimask_output=True)
    assert multi.masks.shape == (3, H, W) and multi.logits.shape == (3, 64, 64) and multi.scores.shape == (3,)
    best = multi.best()
    assert best.masks.shape == (1, H, W) and best.scores[0] == multi.scores.max()
    refined = p.predict(np.array([[40, 30], [60, 20]]), np.array([1, 0]), mask_input=best.logits)
    assert refined.masks.shape == (1, H, W)
    no_prompt = p.predict()
    assert no_prompt.masks.shape == (1, H, W)
    single = p.predict(np.array([40, 30]))  # one point as (2,), label defaults to foreground
    assert single.masks.shape == (1, H, W)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"point_coords": np.zeros((2, 3))},
        {"point_coords": np.zeros((2, 2)), "point_labels": np.ones(3)},
        {"point_coords": np.zeros((1, 2)), "point_labels": np.array([5])},
        {"point_coords": np.array([[np.nan, 1.0]]), "point_labels": np.ones(1)},
        {"point_labels": np.ones(1)},
        {"box": np.zeros(5)},
        {"mask_input": np.zeros((1, 32, 32))},
    ],
)
def test_bad_prompts(micro_model, kwargs):
    p = Predictor(micro_model, "micro-test")
    p.set_image(_images()["gray_u8"])
    with pytest.raises(PromptError):
        p.predict(**kwargs)


def test_predict_batch(micro_model):
    p = Predictor(micro_model, "micro-test")
    p.set_image(_images()["rgb_u8"])
    boxes = np.array([[10, 10, 60, 50], [100, 20, 190, 90], [5, 5, 20, 20]], np.float32)
    pts = np.array([[[30, 30]], [[150, 50]], [[12, 12]]], np.float32)
    masks, logits, scores = p.predict_batch(boxes, pts, np.ones((3, 1)))
    assert masks.shape == (3, H, W) and masks.dtype == bool
    assert logits.shape == (3, 1, 64, 64) and logits.dtype == np.float32
    assert scores.shape == (3,)
    # batched decoding agrees with one-by-one decoding, and chunking changes nothing
    one = p.predict(pts[1], np.ones(1), box=boxes[1])
    np.testing.assert_allclose(logits[1], one.logits, atol=1e-4)
    masks2, logits2, _ = p.predict_batch(boxes, pts, np.ones((3, 1)), chunk=2)
    np.testing.assert_allclose(logits2, logits, atol=1e-5)
    # decode_batch gives the logits on the original grid that predict_batch thresholds
    full, low, sc = p.decode_batch(boxes, pts, np.ones((3, 1)))
    assert full.shape == (3, H, W) and full.dtype == np.float32
    np.testing.assert_array_equal(full > 0, masks)
    np.testing.assert_allclose(low, logits, atol=1e-6)
    np.testing.assert_allclose(sc, scores, atol=1e-6)
    # mask prompts, and an empty batch
    m3, _, _ = p.predict_batch(boxes, mask_input=logits)
    assert m3.shape == (3, H, W)
    m0, l0, s0 = p.predict_batch(np.zeros((0, 4)))
    assert m0.shape == (0, H, W) and l0.shape == (0, 1, 64, 64) and s0.shape == (0,)
    with pytest.raises(PromptError):
        p.predict_batch(np.zeros((3, 4)), point_coords=np.zeros((2, 1, 2)), point_labels=np.ones((2, 1)))
    with pytest.raises(PromptError):
        p.predict_batch()


def test_reset_image(micro_model):
    p = Predictor(micro_model, "micro-test")
    p.set_image(_images()["gray_u8"])
    p.reset_image()
    assert not p.is_image_set


def test_cache_dir_alias(micro_model, tmp_path):
    p = Predictor(micro_model, "micro-test", cache_dir=tmp_path)
    p.set_image(_images()["gray_u8"])
    assert p.cache.root == tmp_path
    assert p.cache.entry_path("micro-test", p.image_key).is_dir()
    assert os.path.commonpath([p.cache.entry_path("micro-test", p.image_key), tmp_path]) == str(tmp_path)


# ----------------------------------------------------------------------------- mirror views


def _mirror_xy(pts: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    out = pts.copy()
    if cols:
        out[:, 0] = W - 1 - out[:, 0]
    if rows:
        out[:, 1] = H - 1 - out[:, 1]
    return out


@pytest.mark.parametrize("views", [2, 4])
def test_flip_views_average_the_mirrored_decodes(micro_model, views):
    """Each view decodes the mirrored image with the mirrored prompts; its logits, mirrored back,
    are averaged with the others' (the same as decoding each mirrored image by hand)."""
    from napari_samsp.embedding import MIRROR_VIEWS
    from napari_samsp.transforms import mirror

    img = _images()["rgb_u8"]
    pts = np.array([[40.0, 30.0], [150.0, 70.0]], np.float32)
    labels = np.array([1, 0])
    box = np.array([20.0, 10.0, 120.0, 80.0], np.float32)
    plain = Predictor(micro_model, "micro-test")
    prev = plain.predict(pts[:1], labels[:1], embedding=plain.embed(img)).logits[:1]
    flipped = Predictor(micro_model, "micro-test", flip_views=views)
    emb = flipped.embed(img)
    assert len(emb.mirrors) == views - 1
    got = flipped.predict(pts, labels, box=box, mask_input=prev, embedding=emb)

    t = emb.transform
    want_logits, want_score = 0.0, 0.0
    for rows, cols in MIRROR_VIEWS[:views]:
        x0, x1 = (W - 1 - box[2], W - 1 - box[0]) if cols else (box[0], box[2])
        y0, y1 = (H - 1 - box[3], H - 1 - box[1]) if rows else (box[1], box[3])
        mask = t.mirror_low_res(torch.from_numpy(prev[None]), rows, cols)[0].numpy()
        out = plain.predict(_mirror_xy(pts, rows, cols), labels, box=np.array([x0, y0, x1, y1], np.float32),
                            mask_input=mask, embedding=plain.embed(mirror(img, rows, cols)))
        want_logits = want_logits + t.mirror_low_res(torch.from_numpy(out.logits[None]), rows, cols)[0].numpy()
        want_score = want_score + out.scores
    np.testing.assert_allclose(got.logits, want_logits / views, atol=1e-4)
    np.testing.assert_allclose(got.scores, want_score / views, atol=1e-5)
    # a view of its own: not the plain decode
    alone = plain.predict(pts, labels, box=box, mask_input=prev, embedding=plain.embed(img))
    assert np.abs(alone.logits - got.logits).max() > 1e-3
    # batches go through the same views
    masks, low, scores = flipped.predict_batch(box[None], pts[None], labels[None], prev[None], embedding=emb)
    np.testing.assert_allclose(low[0], got.logits, atol=1e-4)


def test_flip_views_need_1_2_or_4(micro_model):
    for bad in (0, 3, True):
        with pytest.raises(ValueError, match="flip_views"):
            Predictor(micro_model, "micro-test", flip_views=bad)
    # an embedding made without mirrors gets them when a mirroring predictor decodes it
    emb = Predictor(micro_model, "micro-test").embed(_images()["gray_u8"])
    assert emb.mirrors == ()
    p = Predictor(micro_model, "micro-test", flip_views=2)
    assert p.predict(np.array([[10.0, 10.0]]), embedding=emb).masks.shape == (1, H, W)


@pytest.mark.parametrize("size", [(64, 128), (97, 203)])  # a whole number of low-res pixels, and not
def test_mirror_low_res_matches_mirroring_the_image(size):
    from napari_samsp.transforms import InputTransform, mirror

    t = InputTransform(128, size)
    h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    field = np.sin(xx / 9.0) + 0.02 * yy  # smooth, not symmetric
    low = t.mask_to_low_res(field > 0, 64)  # any low-res map in the input frame
    low = torch.nn.functional.avg_pool2d(low, 3, 1, 1)  # smooth it
    for rows, cols in ((False, True), (True, False), (True, True)):
        there = t.logits_to_original(t.mirror_low_res(low, rows, cols))[0, 0].numpy()
        want = mirror(t.logits_to_original(low)[0, 0].numpy(), rows, cols)
        err = np.abs(there - want)[2:-2, 2:-2].mean()
        assert err < (1e-6 if size == (64, 128) else 0.015), (rows, cols, err)
        back = t.mirror_low_res(t.mirror_low_res(low, rows, cols), rows, cols)
        if size == (64, 128):
            assert torch.equal(back, low)  # exact: its own inverse
    # boxes keep x0 <= x1 and map like their corners
    b = np.array([[10.0, 5.0, 60.0, 30.0]], np.float32)
    m = t.mirror_input_boxes(t.boxes_to_input(b), False, True)
    np.testing.assert_allclose(m, t.boxes_to_input(np.array([[w - 1 - 60.0, 5.0, w - 1 - 10.0, 30.0]], np.float32)), atol=1e-4)


def test_a_click_decodes_on_decode_threads_and_restores_the_setting(micro_model, monkeypatch):
    img = _images()["gray_u8"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        decode = micro_model.decode

        def spy(*a, **k):
            seen.append(torch.get_num_threads())
            return decode(*a, **k)

        monkeypatch.setattr(micro_model, "decode", spy)
        one = Predictor(micro_model, "micro-test")  # default: one thread per click
        emb = one.embed(img)
        got = one.predict(np.array([[10.0, 12.0]]), np.array([1]), embedding=emb)
        assert seen == [1] and torch.get_num_threads() == 2
        every = Predictor(micro_model, "micro-test", decode_threads=None)
        same = every.predict(np.array([[10.0, 12.0]]), np.array([1]), embedding=emb)
        assert seen[-1] == 2  # None leaves torch's setting alone
        np.testing.assert_allclose(got.logits, same.logits, atol=1e-5)
        with pytest.raises(ValueError, match="decode_threads"):
            Predictor(micro_model, "micro-test", decode_threads=0)
    finally:
        torch.set_num_threads(before)


def test_limited_threads_restores_after_errors_nesting_and_other_threads():
    import threading

    from napari_samsp.threads import limited_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with limited_threads(1):
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        with limited_threads(1):
            with limited_threads(1):
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        # blocks in other threads run one at a time and leave every thread as it was
        inside = []

        def work():
            with limited_threads(1):
                inside.append(torch.get_num_threads())

        workers = [threading.Thread(target=work) for _ in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert inside == [1, 1, 1, 1] and torch.get_num_threads() == 2
        with pytest.raises(ValueError):
            with limited_threads(0):
                pass
    finally:
        torch.set_num_threads(before)
