"""Everything-mode (a point grid of prompts) against upstream ``SamAutomaticMaskGenerator``, with oracles, and its wiring.

* Fidelity: the same official-format weights, the same image embedding and the
  same parameters give the same set of masks as upstream's generator (one to one,
  IoU >= 0.99, same predicted IoU and stability score). The embedding is given to
  both (our cache, upstream's predictor fields), so the comparison is of the
  everything-mode itself; the end-to-end comparison (slow) runs each side's own
  encoder, with its own preprocessing (equal for official weights, issue 9.1).
* Behaviour: an oracle decoder that returns the object under each point must
  give back exactly the objects, once each, also across tiles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.utils.amg import mask_to_rle_pytorch

from test_autoseg import _to_low_res, track_embeddings

from napari_samsp import autoseg
from napari_samsp.autoseg import auto_mode, card_segment_options, finetuned_mode, segment_image, segment_stack
from napari_samsp.cli import main
from napari_samsp.everything import (
    EverythingMasks,
    EverythingOptionError,
    EverythingOptions,
    _remove_small_regions,
    everything_masks,
    masks_to_labels,
)
from napari_samsp.models import build_model
from napari_samsp.metrics import match_mask_sets
from napari_samsp.models.checkpoints import load_model
from napari_samsp.models.sam_model import ImageFeatures
from napari_samsp.predictor import Predictor
from napari_samsp.sample_data_gen import synthetic_nuclei
from napari_samsp.transforms import to_rgb_uint8

# --------------------------------------------------------------------------- fidelity against upstream


def _scale_mask_outputs(model: torch.nn.Module, factor: float) -> None:
    """Random SAM weights give logits of about +-0.1 (every stability score 0); scaled, the masks have structure."""
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(factor)


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    """Random vit_b weights (mask outputs scaled x30) saved the way official checkpoints are: torch.save(state_dict)."""
    torch.manual_seed(0)
    model = build_model("vit_b")
    _scale_mask_outputs(model, 30.0)
    path = tmp_path_factory.mktemp("official") / "sam_vit_b_random.pth"
    torch.save(model.state_dict(), path)
    yield path
    path.unlink()


def _image() -> np.ndarray:
    """A non-square (200, 256) gray image of nuclei."""
    img, _ = synthetic_nuclei()
    return np.ascontiguousarray(img[:200])


def _upstream_generator(path, opts: EverythingOptions) -> SamAutomaticMaskGenerator:
    sam = sam_model_registry["vit_b"](checkpoint=str(path)).eval()
    return SamAutomaticMaskGenerator(
        sam,
        points_per_side=opts.points_per_side,
        points_per_batch=opts.points_per_batch,
        pred_iou_thresh=opts.pred_iou_thresh,
        stability_score_thresh=opts.stability_score_thresh,
        stability_score_offset=opts.stability_score_offset,
        box_nms_thresh=opts.box_nms_thresh,
        crop_n_layers=0,
        min_mask_region_area=0,
        output_mode="binary_mask",
    )


def _assert_same_masks(ours: EverythingMasks, records: list[dict]) -> None:
    """One-to-one matching with mask IoU >= 0.99; the matched predicted IoU, stability and point agree."""
    assert len(ours) == len(records) > 0
    rows, cols, iou = match_mask_sets(np.stack([ours.mask(i) for i in range(len(ours))]),
                                      np.stack([r["segmentation"] for r in records]))
    assert iou.min() >= 0.99, np.sort(iou)[:5]
    for i, j in zip(rows, cols):
        rec = records[j]
        assert ours.iou_preds[i] == pytest.approx(rec["predicted_iou"], abs=1e-4)
        assert ours.stability[i] == pytest.approx(rec["stability_score"], abs=0.01)
        np.testing.assert_allclose(ours.points[i], rec["point_coords"][0], atol=1e-6)
        x, y, w, h = rec["bbox"]
        np.testing.assert_allclose(ours.boxes[i], [x, y, x + w, y + h], atol=1)


# Loosened so random weights keep masks (their stability scores lie between 0.05 and 0.75). Random
# weights give masks spread over the whole image (all boxes alike), so the first set keeps every
# candidate through NMS (compares decoding, both filters and every mask one to one), and the second
# lets NMS pick (the same single mask on both sides).
FIDELITY_OPTIONS = [
    EverythingOptions(points_per_side=5, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.4, box_nms_thresh=1.0),
    EverythingOptions(points_per_side=5, points_per_batch=64, pred_iou_thresh=0.01, stability_score_thresh=0.3, box_nms_thresh=0.7),
]


@pytest.mark.parametrize("opts", FIDELITY_OPTIONS, ids=["no-nms", "nms"])
def test_same_masks_as_upstream_generator_on_the_same_embedding(vit_b_file, opts):
    loaded = load_model(vit_b_file, device="cpu")
    assert loaded.model.config.name == "vit_b" and auto_mode(loaded.card) == "everything"
    image = _image()
    rgb = to_rgb_uint8(image)
    # The embedding both sides decode from (random, instead of a 1024 px vit_b encoder run on this CPU):
    # our encoder is stood in for once, then everything-mode finds the embedding in the cache.
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(1, 256, 64, 64, generator=gen)
    predictor = Predictor(loaded.model, loaded.model_id)
    predictor._encode = lambda transform, rgb_u8: ImageFeatures(emb.clone())
    predictor.set_image(image)
    del predictor._encode
    hits = predictor.cache.hits
    ours = everything_masks(predictor, image, opts)
    assert predictor.cache.hits == hits + 1  # everything-mode's one embedding came from the cache

    generator = _upstream_generator(vit_b_file, opts)
    up = generator.predictor

    def set_image(img: np.ndarray, image_format: str = "RGB") -> None:
        up.reset_image()
        up.original_size = img.shape[:2]
        up.input_size = up.transform.get_preprocess_shape(img.shape[0], img.shape[1], up.model.image_encoder.img_size)
        up.features = emb.clone()
        up.is_image_set = True

    up.set_image = set_image
    records = generator.generate(rgb)
    _assert_same_masks(ours, records)
    if opts.box_nms_thresh == 1.0:
        assert 10 < len(ours) < 65, "the filters should keep some of the 75 candidates and drop others"
    else:
        assert len(ours) < 10  # NMS removed most


def _encoder_input(model: torch.nn.Module, set_image) -> torch.Tensor:
    """What ``set_image`` feeds the image encoder, captured without running it."""

    class Captured(Exception):
        pass

    seen: list[torch.Tensor] = []

    def hook(module, args):
        seen.append(args[0].detach().clone())
        raise Captured

    handle = model.image_encoder.register_forward_pre_hook(hook)
    try:
        set_image()
    except Captured:
        pass
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.slow
def test_same_masks_as_upstream_generator_end_to_end(vit_b_file):
    """Each side encodes with its own preprocessing: the same 50 masks."""
    opts = FIDELITY_OPTIONS[0]
    loaded = load_model(vit_b_file, device="cpu")
    image = _image()
    rgb = to_rgb_uint8(image)
    generator = _upstream_generator(vit_b_file, opts)
    predictor = Predictor(loaded.model, loaded.model_id)
    ours_in = _encoder_input(loaded.model, lambda: predictor.set_image(image))
    up_in = _encoder_input(generator.predictor.model, lambda: generator.predictor.set_image(rgb))
    # Official weights get upstream's preprocessing (issue 9.1), so the encoder sees the same input.
    assert ours_in.shape == up_in.shape and torch.allclose(ours_in, up_in, atol=1e-4), (ours_in - up_in).abs().max()
    ours = everything_masks(predictor, image, opts)
    _assert_same_masks(ours, generator.generate(rgb))


# --------------------------------------------------------------------------- behaviour with an oracle decoder


def _objects_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB image whose green channel is the object id (0 background) and red the foreground, and the labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.uint8)
    k = 0
    for _ in range(200):
        r = rng.uniform(12, 26)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (labels[disc] > 0).any() or (labels[np.roll(disc, 3, 0) | np.roll(disc, 3, 1)] > 0).any():
            continue
        k += 1
        labels[disc] = k
        if k == 12:
            break
    rgb = np.stack([np.where(labels > 0, 200, 20), labels, np.full_like(labels, 7)], -1).astype(np.uint8)
    return rgb, labels.astype(np.uint16)


def install_oracle(monkeypatch, predictor: Predictor) -> list[int]:
    """``model.decode`` -> for each point, the object under it in the crop being decoded (background: low predicted IoU).

    Returns a list that collects the number of points decoded per call.
    """
    calls: list[int] = []
    cache: dict[tuple[str, int], torch.Tensor] = {}
    embedding_of = track_embeddings(monkeypatch, predictor)

    def decode(features, point_coords=None, point_labels=None, boxes=None, mask_input=None,
               multimask_output=False, image_index=None, num_prompts=None):
        emb = embedding_of(features)
        ids_map = emb.rgb[..., 1]
        oh, ow = emb.original_size
        h, w = emb.transform.resized_size
        pts = point_coords[:, 0].double().cpu().numpy()
        xs = np.clip((pts[:, 0] * ow / w).astype(int), 0, ow - 1)
        ys = np.clip((pts[:, 1] * oh / h).astype(int), 0, oh - 1)
        logits, ious = [], []
        for x, y in zip(xs, ys):
            oid = int(ids_map[y, x])
            key = (emb.key, oid)
            if key not in cache:
                cache[key] = _to_low_res(emb, np.where(ids_map == oid, 40.0, -40.0), predictor.low_res_size)[0, 0]
            logits.append(cache[key])
            ious.append(0.95 if oid else 0.1)
        m = 3 if multimask_output else 1
        low = torch.stack(logits)[:, None].expand(-1, m, -1, -1)
        calls.append(len(xs))
        return low, torch.tensor(ious)[:, None].expand(-1, m)

    monkeypatch.setattr(predictor.model, "decode", decode)
    return calls


def _matched_ious(labels: np.ndarray, gt: np.ndarray) -> list[float]:
    out = []
    for oid in range(1, int(gt.max()) + 1):
        g = gt == oid
        ids, counts = np.unique(labels[g], return_counts=True)
        best = ids[np.argmax(counts)]
        p = labels == best
        out.append(float((g & p).sum() / (g | p).sum()) if best else 0.0)
    return out


def test_oracle_objects_come_back_once_each(micro_model, monkeypatch):
    rgb, gt = _objects_image(120, 100)
    p = Predictor(micro_model, "micro-oracle")
    calls = install_oracle(monkeypatch, p)
    res = segment_image(p, rgb, mode="everything", points_per_side=16, points_per_batch=50)
    assert calls == [50, 50, 50, 50, 50, 6]  # 256 points, batched
    assert res.labels.dtype == np.uint16 and res.labels.shape == gt.shape
    assert int(res.labels.max()) == int(gt.max()) == len(res.scores)
    assert min(_matched_ious(res.labels, gt)) > 0.85
    assert all(s == pytest.approx(0.95) for s in res.scores.values())
    assert res.probability.shape == gt.shape and res.probability[gt > 0].mean() > 0.9


def test_oracle_tiled_objects_across_seams_are_one_label(micro_model, monkeypatch):
    """300 x 330 with a 128 px model: the whole image plus 4 tiles of 256 px; objects crossing seams come out once."""
    rgb, gt = _objects_image(300, 330, seed=2)
    p = Predictor(micro_model, "micro-oracle")
    install_oracle(monkeypatch, p)
    seen: list[tuple[int, int]] = []
    res = segment_image(p, rgb, mode="everything", points_per_side=24, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert int(res.labels.max()) == int(gt.max())
    assert min(_matched_ious(res.labels, gt)) > 0.8
    masks = everything_masks(p, rgb, EverythingOptions(points_per_side=24))
    assert len(masks) == int(gt.max())  # no duplicates between crops (the label image would hide exact ones)
    from_tiles = (masks.crop_boxes != [0, 0, 330, 300]).any(axis=1)
    assert from_tiles.sum() >= len(masks) // 2  # NMS between crops prefers the tile (finer) copy
    # The same image untiled (threshold above its size) finds the same objects.
    whole = segment_image(p, rgb, mode="everything", points_per_side=24, tile_threshold=400)
    assert int(whole.labels.max()) == int(gt.max())


def test_oracle_stack_ids_are_unique_across_slices(micro_model, monkeypatch):
    rgb, gt = _objects_image(80, 90, seed=1)
    p = Predictor(micro_model, "micro-oracle")
    install_oracle(monkeypatch, p)
    out = segment_stack(p, np.stack([rgb, rgb]), mode="everything", rgb=True, points_per_side=12)
    n = int(gt.max())
    assert out.shape == (2, 80, 90) and out.dtype == np.uint16
    assert set(np.unique(out[0])) == set(range(n + 1)) and set(np.unique(out[1])) == {0, *range(n + 1, 2 * n + 1)}


def test_cancel_stops_before_a_crop(micro_model, monkeypatch):
    p = Predictor(micro_model, "micro-oracle")
    install_oracle(monkeypatch, p)
    with pytest.raises(autoseg.SegmentationCancelled):
        segment_image(p, _objects_image(60, 60)[0], mode="everything", cancel=lambda: True)


# --------------------------------------------------------------------------- pieces


def _masks(shape, boxes_masks: list[tuple[np.ndarray, float]]) -> EverythingMasks:
    rles = mask_to_rle_pytorch(torch.as_tensor(np.stack([m for m, _ in boxes_masks])))
    n = len(rles)
    return EverythingMasks(
        rles, np.zeros((n, 4), np.float32), np.array([s for _, s in boxes_masks], np.float32),
        np.ones(n, np.float32), np.zeros((n, 2)), np.tile([0, 0, shape[1], shape[0]], (n, 1)), shape,
    )


def test_masks_to_labels_paints_largest_first():
    big = np.zeros((20, 20), bool)
    big[2:18, 2:18] = True
    small = np.zeros((20, 20), bool)
    small[5:9, 5:9] = True
    inner = np.zeros((20, 20), bool)
    inner[12:14, 12:14] = True
    hidden = np.zeros((20, 20), bool)
    hidden[12:14, 12:14] = True  # the same area as `inner`: equal areas keep their order, so it is painted over inner
    labels, scores = masks_to_labels(_masks((20, 20), [(small, 0.8), (big, 0.9), (inner, 0.7), (hidden, 0.6)]))
    assert labels.dtype == np.uint16
    assert labels[10, 10] == 1 and scores[1] == pytest.approx(0.9)  # big, painted first
    assert labels[6, 6] == 2 and scores[2] == pytest.approx(0.8)  # small on top of big
    assert labels[12, 12] == 3 and scores[3] == pytest.approx(0.6)  # hidden painted over inner (same area, later)
    assert int(labels.max()) == 3 and len(scores) == 3  # inner vanished completely
    assert masks_to_labels(_masks((5, 5), [(np.zeros((5, 5), bool), 0.5)]))[0].max() == 0


def test_remove_small_regions_rules():
    m = np.zeros((30, 30), bool)
    m[2:20, 2:20] = True
    m[8:10, 8:10] = False  # a 4 px hole
    m[25:27, 25:27] = True  # a 4 px island
    out, changed = _remove_small_regions(m, 10, "holes")
    assert changed and out[8:10, 8:10].all() and out[25:27, 25:27].all()
    out, changed = _remove_small_regions(out, 10, "islands")
    assert changed and not out[25:27, 25:27].any() and out[2:20, 2:20].all()
    again, changed = _remove_small_regions(out, 10, "islands")
    assert not changed and again is out
    tiny = np.zeros((30, 30), bool)
    tiny[1:3, 1:3] = True
    tiny[10:13, 10:13] = True
    kept, changed = _remove_small_regions(tiny, 100, "islands")
    assert changed and kept[10:13, 10:13].all() and not kept[1:3, 1:3].any()  # all small: the largest stays


def test_min_mask_region_area_removes_islands(micro_model, monkeypatch):
    rgb, gt = _objects_image(120, 100)
    free = np.argwhere(np.lib.stride_tricks.sliding_window_view(gt == 0, (14, 14)).all(axis=(2, 3)))
    y, x = free[len(free) // 2] + 4
    rgb[y : y + 6, x : x + 6] = (200, 1, 7)  # a 36 px speck that belongs to object 1
    p = Predictor(micro_model, "micro-oracle")
    install_oracle(monkeypatch, p)
    base = segment_image(p, rgb, mode="everything", points_per_side=16)
    one = base.labels[gt == 1]
    assert one.all() and (base.labels[y : y + 6, x : x + 6] == np.bincount(one).argmax()).mean() > 0.5
    cleaned = segment_image(p, rgb, mode="everything", points_per_side=16, min_mask_region_area=50)
    assert int(cleaned.labels.max()) == int(gt.max())
    assert not cleaned.labels[y : y + 6, x : x + 6].any() and cleaned.labels[gt == 1].all()


def test_options_are_checked():
    assert EverythingOptions() == EverythingOptions(32, 64, 0.88, 0.95, 1.0, 0.7, 0.7, 0)  # upstream's defaults
    with pytest.raises(EverythingOptionError, match="points_per_side"):
        EverythingOptions(points_per_side=0)
    with pytest.raises(EverythingOptionError, match="pred_iou_thresh"):
        EverythingOptions(pred_iou_thresh=1.5)
    with pytest.raises(EverythingOptionError, match="unknown everything-mode option"):
        EverythingOptions.from_kwargs(num_passes=2)


# --------------------------------------------------------------------------- which mode, CLI


def test_the_card_decides_the_mode(vit_b_file, micro_model, tmp_path):
    assert auto_mode(load_model(vit_b_file, device="cpu").card) == "everything"  # foreign weights: the loader says so
    wrapped = tmp_path / "micro_sam_like.pt"  # a SAM state dict wrapped as micro-sam saves its models
    torch.save({"model_state": micro_model.state_dict()}, wrapped)
    assert auto_mode(load_model(wrapped, device="cpu").card) == "everything"
    default = load_model(None, device="cpu")
    assert auto_mode(default.card) == default.card["mode"] in ("semantic", "instance")
    assert auto_mode(None) == "semantic" and auto_mode({"mode": "bogus"}) == "semantic"
    assert card_segment_options({"mode": "everything", "num_passes": 2}) == {}
    assert card_segment_options({"mode": "everything", "everything": {"points_per_side": 16}}) == {"points_per_side": 16}
    assert card_segment_options({"mode": "instance", "num_passes": 3}, "everything") == {}
    assert card_segment_options({"mode": "everything", "num_passes": 3}, "semantic") == {"num_passes": 3, "refine_instances": True, "flip_views": 1}
    # After a SAM-SP fine-tune the model self-prompts; unless the base weights were kept.
    assert finetuned_mode({"mode": "everything"}, has_instances=True) == "instance"
    assert finetuned_mode({"mode": "everything"}, has_instances=False) == "semantic"
    assert finetuned_mode({"mode": "everything"}, True, kept_base=True) == "everything"
    assert finetuned_mode({"mode": "semantic"}, has_instances=True) == "semantic"


def test_default_model_everything_gives_a_label_image():
    loaded = load_model(None, device="cpu")
    p = Predictor(loaded.model, loaded.model_id)
    img, _ = synthetic_nuclei()
    img = img[:150, :200]
    res = segment_image(p, img, mode="everything", points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert res.labels.dtype == np.uint16 and res.labels.shape == (150, 200)
    ids = set(np.unique(res.labels).tolist()) - {0}
    assert ids == set(range(1, len(ids) + 1)) == set(res.scores)
    assert res.probability.shape == (150, 200) and 0.0 <= res.probability.min() <= res.probability.max() <= 1.0


def test_cli_segment_everything(tmp_path, capsys):
    img, _ = synthetic_nuclei()
    Image.fromarray(img[:90, :120]).save(tmp_path / "n.png")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "n.png"), "-o", str(out), "--mode", "everything",
                 "--points-per-side", "4", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "mode everything" in captured.out
    labels = np.asarray(Image.open(out / "n.png"))
    assert labels.shape == (90, 120) and labels.dtype == np.uint16
    code = main(["segment", str(tmp_path / "n.png"), "-o", str(tmp_path / "bad"), "--mode", "everything",
                 "--points-per-side", "0", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "points_per_side must be >= 1" in err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- plugin


@pytest.mark.gui
def test_plugin_offers_everything_and_the_card_selects_it(make_napari_viewer, qtbot, tmp_path, micro_model, monkeypatch):
    """A model whose card says "everything" switches the Mode box to it; segmenting gives the oracle's objects."""
    pytest.importorskip("pytestqt")
    from napari_samsp._widget import SamspWidget
    from napari_samsp.models.checkpoints import save_model

    path = save_model(micro_model, tmp_path / "vanilla.safetensors", {"mode": "everything"})
    viewer = make_napari_viewer()
    widget = SamspWidget(viewer, project=tmp_path / "project")
    viewer.window.add_dock_widget(widget, name="SAM-SP")
    box = widget.segment_panel.mode
    assert [box.itemText(i) for i in range(box.count())] == ["semantic", "instance", "everything"]
    box.setCurrentText("semantic")
    assert widget.load_model(str(path)) is not None
    qtbot.waitUntil(lambda: widget.is_idle(), timeout=30_000)
    assert box.currentText() == "everything"
    rgb, gt = _objects_image(96, 96, seed=3)
    layer = viewer.add_image(rgb, name="objs", rgb=True)
    assert widget.use_layer(layer) is not None
    install_oracle(monkeypatch, widget.session.predictor)
    assert widget.segment() is not None
    qtbot.waitUntil(lambda: widget.is_idle(), timeout=30_000)
    labels = np.asarray(viewer.layers["objs labels"].data)
    assert int(labels.max()) == int(gt.max()) and min(_matched_ious(labels, gt)) > 0.85
    assert int(viewer.layers["objs labels"].selected_label) == int(gt.max()) + 1  # the next new object gets a fresh id
