"""The Embedding value (issue 12, point 1): decoding takes the embedding explicitly, so segmentation,
everything-mode, propagation and reward scoring never change which image a caller's Predictor holds,
and the results are those of the set_image path, bit for bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_samsp._ui.embeddings import PlaneEmbeddings, plane_key
from napari_samsp.autoseg import default_tiling, segment, segment_image
from napari_samsp.embedding import Embedding
from napari_samsp.errors import SamspError
from napari_samsp.everything import segment_everything
from napari_samsp.interactive import ObjectEditor, PromptSet, propagate_object
from napari_samsp.predictor import Predictor, image_key
from napari_samsp.reward.candidates import generate_candidates
from napari_samsp.reward.ranking import score_image
from napari_samsp.transforms import to_rgb_uint8


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (h, w), dtype=np.uint16)


@pytest.fixture
def held(micro_model):
    """A predictor holding a small image (set_image), and that embedding."""
    p = Predictor(micro_model, "micro-embed")
    p.set_image(_image(40, 52, 0))
    return p, p.embedding


def _assert_still_holds(p: Predictor, before: Embedding) -> None:
    assert p.embedding is before
    assert p.image_key == before.key and p.original_size == (40, 52)


def test_embedding_value(micro_model):
    p = Predictor(micro_model, "micro-embed")
    img = _image(37, 61, 1)
    emb = p.embed(img)
    assert not p.is_image_set  # embed changes nothing in the predictor
    g = micro_model.prompt_encoder.image_embedding_size[0]
    assert emb.features.embeddings.shape[0] == 1 and tuple(emb.features.embeddings.shape[-2:]) == (g, g)
    assert emb.rgb.shape == (37, 61, 3) and emb.rgb.dtype == np.uint8 and not emb.rgb.flags.writeable
    assert emb.key == image_key(to_rgb_uint8(img)) and emb.original_size == (37, 61)
    assert emb.cache_id == "micro-embed" and emb.id == ("micro-embed", emb.key) and not emb.from_cache
    with pytest.raises(dataclasses.FrozenInstanceError):
        emb.key = "x"  # type: ignore[misc]
    again = p.embed(img)
    assert again.from_cache and again.id == emb.id
    # a uint8 RGB plane passes through: the caller's array stays writable
    rgb = np.zeros((20, 30, 3), np.uint8)
    p.embed(rgb)
    assert rgb.flags.writeable
    with pytest.raises(SamspError, match="no image is set"):
        p.predict(point_coords=np.array([[3.0, 4.0]]))


def test_predict_on_an_embedding_equals_the_set_image_path(micro_model):
    img = _image(45, 70, 2)
    old = Predictor(micro_model, "micro-embed")
    old.set_image(img)
    new = Predictor(micro_model, "micro-embed")
    emb = new.embed(img)
    pts, lab, box = np.array([[10.0, 12.0], [30.0, 20.0]]), np.array([1, 0]), np.array([5.0, 6.0, 40.0, 30.0])
    for kwargs in ({"point_coords": pts, "point_labels": lab}, {"box": box, "multimask_output": True}, {}):
        a, b = old.predict(**kwargs), new.predict(**kwargs, embedding=emb)
        for x, y in zip((a.masks, a.logits, a.scores), (b.masks, b.logits, b.scores)):
            np.testing.assert_array_equal(x, y)
        c = new.predict(**kwargs, embedding=new.embed(img))  # from the cache: bit-identical too
        np.testing.assert_array_equal(a.logits, c.logits)
    boxes = np.array([[0, 0, 20, 20], [10, 5, 60, 40]], np.float32)
    for x, y in zip(old.predict_batch(boxes=boxes), new.predict_batch(boxes=boxes, embedding=emb)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(old.decode_batch(boxes=boxes), new.decode_batch(boxes=boxes, embedding=emb)):
        np.testing.assert_array_equal(x, y)
    assert not new.is_image_set
    prompts = PromptSet(pts.astype(np.float32), lab.astype(np.int64), None)
    plane = np.zeros((45, 70), np.uint32)
    np.testing.assert_array_equal(
        ObjectEditor(old, plane, 1).update(prompts), ObjectEditor(new, plane, 1, embedding=emb).update(prompts)
    )


@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_segment_on_an_embedding_equals_the_set_image_path(micro_model, mode):
    img = _image(48, 56, 3)
    old = Predictor(micro_model, "micro-embed")
    old.set_image(img)
    a = segment(old, mode=mode, num_passes=2)
    new = Predictor(micro_model, "micro-embed")
    for b in (segment(new, new.embed(img), mode=mode, num_passes=2), segment(new, img, mode=mode, num_passes=2),
              segment_image(new, new.embed(img), mode=mode, num_passes=2)):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.probability, b.probability)
        assert a.scores == b.scores
    assert not new.is_image_set


def test_tiled_segmentation_leaves_the_predictor_alone(held, micro_model):
    p, before = held
    big = _image(300, 280, 4)
    assert max(big.shape) > default_tiling(micro_model.img_size)[0]
    res = segment_image(p, big, mode="semantic", num_passes=1)
    _assert_still_holds(p, before)  # before: the last tile
    fresh = segment_image(Predictor(micro_model, "micro-embed"), big, mode="semantic", num_passes=1)
    np.testing.assert_array_equal(res.probability, fresh.probability)
    # an Embedding of a large plane is tiled the same way
    from_emb = segment_image(p, p.embed(big), mode="semantic", num_passes=1)
    np.testing.assert_array_equal(res.probability, from_emb.probability)


@pytest.mark.parametrize("shape", [(40, 60), (300, 200)], ids=["whole", "tiled"])
def test_everything_leaves_the_predictor_alone(held, shape):
    p, before = held
    img = _image(*shape, 5)
    res = segment_everything(p, img, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    _assert_still_holds(p, before)  # before: the image (whole) or the last crop (tiled)
    assert res.labels.shape == shape


def test_reward_scoring_and_propagation_leave_the_predictor_alone(held):
    p, before = held
    img = _image(36, 44, 6)
    cands = generate_candidates(p, img, num_passes=2, tta=True)
    _assert_still_holds(p, before)  # before: the image again after the flip, held by the predictor
    assert cands.sources[-1] == "flip"
    # the same candidates from the image's embedding
    again = generate_candidates(p, p.embed(img), num_passes=2, tta=True)
    np.testing.assert_array_equal(cands.probs, again.probs)
    score_image(p, img, mode="instance")
    _assert_still_holds(p, before)  # before: the scored image
    stack = np.stack([_image(32, 32, 7 + z).astype(np.uint8) for z in range(3)])
    labels = np.zeros((3, 32, 32), np.uint32)
    labels[1, 8:20, 8:20] = 1
    propagate_object(p, lambda z: stack[z], 3, labels, 1, 1)
    _assert_still_holds(p, before)  # before: the last slice visited


def test_plane_embeddings_per_predictor_lru(micro_model):
    p, q = Predictor(micro_model, "a"), Predictor(micro_model, "b")
    cache = PlaneEmbeddings(max_entries=2)
    e0, e1, e2 = (p.embed(_image(20, 20, s)) for s in range(3))
    cache.put(p, plane_key(7, 0), e0)
    cache.put(p, plane_key(7, 1), e1)
    assert cache.get(p, (7, 0)) is e0 and cache.get(p, (7, 1)) is e1
    assert cache.get(q, (7, 0)) is None and cache.get(None, (7, 0)) is None  # another model's predictor
    cache.get(p, (7, 0))  # most recently used: (7, 1) goes first
    cache.put(p, plane_key(7, 2, (0, 10, 0, 10)), e2)
    assert len(cache) == 2 and cache.get(p, (7, 1)) is None
    assert cache.get(p, (7, 2, (0, 10, 0, 10))) is e2 and cache.get(p, (7, 2)) is None
    cache.clear()
    assert cache.get(p, (7, 0)) is None
