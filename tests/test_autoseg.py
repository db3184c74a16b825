"""Prompt-free segmentation: structure with a random model, behaviour with oracle models, and tiling.

The micro model is random, so behaviour that depends on accuracy uses oracles:
``SamSP.run_passes`` and ``Predictor.decode_batch`` are replaced by functions
that read the answer from the pixels of the embedding being decoded (the red
channel encodes the foreground logit, the green channel the object id), so they
work unchanged on whole images and on tiles.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_samsp import autoseg
from napari_samsp.autoseg import AutoSegResult, SegmentationCancelled, segment, segment_image, segment_stack, segment_tiled
from napari_samsp.embedding import Embedding
from napari_samsp.errors import InputImageError
from napari_samsp.models.sam_sp import PassOutput, SamSP
from napari_samsp.predictor import Predictor
from napari_samsp.tiling import blend_weights, merge_instance_tiles, plan_tiles

# -- oracle helpers --------------------------------------------------------------------


def track_embeddings(monkeypatch, predictor: Predictor):
    """Record every embedding ``predictor.embed`` makes (set_image included); returns the lookup
    ``features -> Embedding`` the oracles use to find the pixels of what they decode."""
    made = getattr(predictor, "_oracle_made", None)
    if made is None:
        made = {}
        original = predictor.embed

        def embed(image, rgb=None, **kwargs):
            emb = original(image, rgb, **kwargs)
            made[id(emb.features)] = emb
            return emb

        monkeypatch.setattr(predictor, "embed", embed)
        monkeypatch.setattr(predictor, "_oracle_made", made, raising=False)
    return lambda features: made[id(features)]


def _to_low_res(emb: Embedding, field: np.ndarray, side: int) -> torch.Tensor:
    """An (H, W) logit field on the original grid of ``emb`` -> (1, 1, side, side) low-res logits,
    as a perfect model would give."""
    t = emb.transform
    s = t.img_size
    h, w = t.resized_size
    x = torch.from_numpy(np.asarray(field, np.float32))[None, None]
    x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
    x = F.pad(x, (0, s - w, 0, s - h), mode="replicate")
    return F.interpolate(x, (side, side), mode="bilinear", align_corners=False, antialias=True)


def _logit_from_red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.float32) - 127.5) / 8.0


def install_semantic_oracle(monkeypatch, predictor: Predictor, artefact: float = 0.0) -> None:
    """SamSP.run_passes -> logits read from the red channel of the current image.

    ``artefact`` adds a positive logit bias that decays over ~4 px from the
    border of whatever the model is shown, like real models' edge effects.
    """
    embedding_of = track_embeddings(monkeypatch, predictor)

    def run_passes(self, features, num_passes=None):
        emb = embedding_of(features)
        field = _logit_from_red(emb.rgb)
        if artefact:
            hh, ww = field.shape
            yy, xx = np.mgrid[:hh, :ww]
            d = np.minimum.reduce([yy, xx, hh - 1 - yy, ww - 1 - xx]).astype(np.float32)
            field = field + artefact * np.exp(-d / 4.0)
        lr = _to_low_res(emb, field, predictor.low_res_size)
        k = num_passes or self.num_passes
        return [PassOutput(lr, torch.full((1, 1), 0.9), None) for _ in range(k)]

    monkeypatch.setattr(SamSP, "run_passes", run_passes)


def install_instance_oracle(monkeypatch, predictor: Predictor, behaviour: str = "exact") -> list:
    """predictor.decode_batch -> logits of the object (green channel id) under each prompt's point.

    behaviour: "exact" the object; "dilated" grown by 4 px (neighbours overlap, the
    logit falls off with the distance to the object); "empty" nothing;
    "everything" the whole image (degenerate decodes).
    """
    calls = []

    def decode_batch(boxes=None, point_coords=None, point_labels=None, mask_input=None, chunk=64, *, embedding=None):
        emb = predictor.embedding_of(embedding)
        ids = emb.rgb[..., 1]
        h, w = ids.shape
        n = len(boxes)
        calls.append(n)
        fields = np.zeros((n, h, w), np.float32)
        for i in range(n):
            x, y = np.round(point_coords[i, 0]).astype(int)
            obj = ids == ids[min(y, h - 1), min(x, w - 1)]
            inside = ndimage.distance_transform_edt(obj)
            outside = ndimage.distance_transform_edt(~obj)
            if behaviour == "exact":
                f = np.where(obj, 2.0 + inside, -2.0 - outside)
            elif behaviour == "dilated":
                f = np.where(outside <= 4, 2.0 + inside - 0.25 * outside, -5.0 - outside)
            elif behaviour == "empty":
                f = -10.0 - outside
            else:
                f = np.full((h, w), 5.0)
            fields[i] = f
        low = torch.cat([_to_low_res(emb, f, predictor.low_res_size) for f in fields]).numpy() if n else np.zeros((0, 1, 64, 64), np.float32)
        return fields, low, np.full(n, 0.8, np.float32)

    monkeypatch.setattr(predictor, "decode_batch", decode_batch)
    return calls


def disc_image(shape, discs) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image: red 255 inside discs (0 outside), green = disc id; and the (H, W) id map."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    ids = np.zeros(shape, np.uint8)
    for k, (cy, cx, r) in enumerate(discs, start=1):
        ids[((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r] = k
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.where(ids > 0, 255, 0)
    rgb[..., 1] = ids
    rgb[..., 2] = 7  # keeps the pixel hash distinct from other tests' images
    return rgb, ids


def matched_iou(labels: np.ndarray, gt: np.ndarray) -> list[float]:
    """For every GT object, the best IoU with a predicted object."""
    out = []
    for g in np.unique(gt[gt > 0]):
        obj = gt == g
        cand = np.unique(labels[obj])
        cand = cand[cand > 0]
        best = 0.0
        for c in cand:
            p = labels == c
            best = max(best, (p & obj).sum() / (p | obj).sum())
        out.append(best)
    return out


def assert_sequential(labels: np.ndarray) -> None:
    ids = np.unique(labels)
    assert ids[0] == 0 or labels.all()
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, len(ids[ids > 0]) + 1))


# -- structure with the random micro model ------------------------------------------------

H, W = 97, 203


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8),
        np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8),
        np.random.default_rng(2).integers(0, 256, (H, W, 4), dtype=np.uint8),
        np.random.default_rng(3).integers(0, 4000, (H, W), dtype=np.uint16),
        np.random.default_rng(4).normal(size=(H, W)).astype(np.float32),
    ],
    ids=["gray_u8", "rgb_u8", "rgba_u8", "gray_u16", "gray_f32"],
)
@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_structure_random_model(micro_model, image, mode):
    p = Predictor(micro_model, "micro-test")
    res = segment(p, image, mode=mode, num_passes=2)
    assert isinstance(res, AutoSegResult)
    assert res.labels.shape == (H, W) and res.labels.dtype == np.uint16
    assert res.probability.shape == (H, W) and res.probability.dtype == np.float32
    assert 0.0 <= res.probability.min() and res.probability.max() <= 1.0
    assert len(res.pass_probabilities) == 2
    assert all(pp.shape == (H, W) and pp.dtype == np.float32 for pp in res.pass_probabilities)
    np.testing.assert_array_equal(res.pass_probabilities[-1], res.probability)
    assert_sequential(res.labels)
    if mode == "semantic":
        assert set(np.unique(res.labels)) <= {0, 1}
    assert set(res.scores) == set(np.unique(res.labels[res.labels > 0]).tolist())


def test_options_and_current_image(micro_model):
    p = Predictor(micro_model, "micro-test")
    img = np.random.default_rng(5).integers(0, 256, (40, 50), dtype=np.uint8)
    p.set_image(img)
    r1 = segment(p, num_passes=1)
    assert len(r1.pass_probabilities) == 1
    r3 = segment(p, mode="instance", num_passes=3, use_points=True, refine_instances=False)
    assert len(r3.pass_probabilities) == 3 and r3.labels.shape == (40, 50)
    with pytest.raises(ValueError):
        segment(p, mode="panoptic")
    with pytest.raises(ValueError):
        segment(p, threshold=1.5)
    with pytest.raises(InputImageError):
        segment(p, np.full((10, 10), np.nan, np.float32))


# -- semantic and instance behaviour with oracles -------------------------------------------


def test_empty_foreground_gives_zero_labels(micro_model, monkeypatch):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p)
    img = np.zeros((60, 80, 3), np.uint8)  # red 0 -> logit -16 everywhere
    for mode in ("semantic", "instance"):
        res = segment(p, img, mode=mode)
        assert res.labels.dtype == np.uint16 and not res.labels.any() and res.scores == {}
        assert res.probability.max() < 0.01


def test_semantic_oracle_and_min_size(micro_model, monkeypatch):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p)
    rgb, ids = disc_image((128, 128), [(40, 40, 15), (90, 90, 20), (20, 110, 2)])
    res = segment(p, rgb, mode="semantic", min_size=30)
    fg = res.labels > 0
    gt = (ids == 1) | (ids == 2)
    assert (fg & gt).sum() / (fg | gt).sum() > 0.9
    assert not res.labels[ids == 3].any()  # the 13-pixel speck is below min_size
    assert res.scores == {1: pytest.approx(0.9)}


def test_flip_views_average_mirrored_logits_back_on_the_image(micro_model, monkeypatch):
    """A model that sees a left-right ramp of bias in whatever it is shown: averaging the image
    with its mirror, mapped back, cancels the ramp exactly; a view not mapped back would not."""
    p = Predictor(micro_model, "micro-test")
    planes = {}  # id(features) -> the plane they are the features of, for every view
    plane_features = p._plane_features

    def tracked(cache_id, transform, rgb_u8, key=None):
        feats, cached = plane_features(cache_id, transform, rgb_u8, key)
        planes[id(feats)] = (transform, rgb_u8)
        return feats, cached

    monkeypatch.setattr(p, "_plane_features", tracked)
    rgb, ids = disc_image((96, 128), [(30, 30, 14), (60, 95, 18)])
    rgb[..., 0] = np.where(ids > 0, 160, 96)  # logits +-4: a ramp of +-6 flips the sides' labels

    def run_passes(self, features, num_passes=None):
        transform, plane = planes[id(features)]
        field = _logit_from_red(plane)
        field = field + np.linspace(-6, 6, field.shape[1], dtype=np.float32)[None]  # bias toward the right
        emb = Embedding(features, transform, plane, "k", "c")
        return [PassOutput(_to_low_res(emb, field, p.low_res_size), torch.full((1, 1), 0.9), None)]

    monkeypatch.setattr(SamSP, "run_passes", run_passes)
    truth = _logit_from_red(rgb)
    one = segment(p, rgb, mode="semantic", num_passes=1)
    two = segment(p, rgb, mode="semantic", num_passes=1, flip_views=2)
    four = segment(p, rgb, mode="semantic", num_passes=1, flip_views=4)
    logit = lambda prob: np.log(prob / (1 - prob))  # noqa: E731
    inner = (slice(8, -8), slice(8, -8))  # the borders carry the resampling's edge effects
    err_one = np.abs(logit(one.probability) - truth)[inner].mean()
    err_two = np.abs(logit(two.probability) - truth)[inner].mean()
    assert err_one > 2.0 and err_two < 0.5 * err_one
    np.testing.assert_allclose(four.probability, two.probability, atol=1e-4)  # the ramp has no up-down part
    gt = ids > 0
    assert (two.labels.astype(bool) == gt).mean() > (one.labels.astype(bool) == gt).mean()
    with pytest.raises(ValueError, match="flip_views"):
        segment(p, rgb, flip_views=3)


SEPARATE = [(25, 25, 10), (25, 100, 9), (100, 30, 11)]
TOUCHING = [(95, 85, 11), (95, 106, 11)]  # centres 21 px apart: a 1-pixel neck


@pytest.mark.parametrize("refine", [False, True])
def test_instance_separates_and_splits_touching(micro_model, monkeypatch, refine):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p)
    calls = install_instance_oracle(monkeypatch, p, "exact")
    rgb, ids = disc_image((128, 128), SEPARATE + TOUCHING)
    assert ndimage.label(ids > 0)[1] == 4  # the touching pair is one component
    res = segment(p, rgb, mode="instance", refine_instances=refine, batch_size=2)
    assert res.labels.max() == 5
    assert_sequential(res.labels)
    ious = matched_iou(res.labels, ids)
    assert min(ious) > (0.85 if refine else 0.7), ious
    assert set(res.scores) == {1, 2, 3, 4, 5}
    if refine:
        assert calls == [2, 2, 1]  # 5 objects in batches of 2
        assert all(s == pytest.approx(0.8) for s in res.scores.values())
    else:
        assert calls == []


def test_overlapping_decodes_are_resolved(micro_model, monkeypatch):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p)
    install_instance_oracle(monkeypatch, p, "dilated")
    rgb, ids = disc_image((128, 128), SEPARATE + TOUCHING)
    res = segment(p, rgb, mode="instance")
    assert res.labels.max() == 5
    assert_sequential(res.labels)
    # the dilated decodes of the touching pair overlap: the seam follows the higher logit
    a, b = res.labels[95, 80], res.labels[95, 111]
    assert a != b and a > 0 and b > 0
    assert res.labels[95, 94] == a and res.labels[95, 97] == b
    for k in range(1, 6):  # every disc is (almost) entirely one label, the decodes being grown by 4 px
        vals, counts = np.unique(res.labels[ids == k], return_counts=True)
        assert vals[np.argmax(counts)] > 0 and counts.max() / counts.sum() > 0.9


@pytest.mark.parametrize("behaviour", ["empty", "everything"])
def test_degenerate_decodes_fall_back_to_watershed(micro_model, monkeypatch, behaviour):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p)
    install_instance_oracle(monkeypatch, p, behaviour)
    rgb, ids = disc_image((128, 128), SEPARATE + TOUCHING)
    res = segment(p, rgb, mode="instance")
    unrefined = segment(p, rgb, mode="instance", refine_instances=False)
    assert res.labels.max() == 5
    np.testing.assert_array_equal(res.labels > 0, unrefined.labels > 0)
    assert min(matched_iou(res.labels, ids)) > 0.7


# -- tiling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(700, 900), (256, 256), (100, 1000), (257, 513), (1, 5), (1000, 300)])
@pytest.mark.parametrize("tile,overlap", [(256, 64), (100, 0), (96, 40)])
def test_plan_tiles_covers_every_pixel(shape, tile, overlap):
    tiles = plan_tiles(shape, tile, overlap)
    cover = np.zeros(shape, np.int32)
    for y0, y1, x0, x1 in tiles:
        assert 0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]
        assert y1 - y0 == min(tile, shape[0]) and x1 - x0 == min(tile, shape[1])
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    ys = sorted({t[0] for t in tiles})
    for a, b in zip(ys, ys[1:]):
        assert a + tile - b >= overlap  # neighbours overlap by at least `overlap`
    assert len(tiles) == len(set(tiles))


def test_plan_tiles_rejects_bad_arguments():
    with pytest.raises(ValueError):
        plan_tiles((100, 100), 64, 64)
    with pytest.raises(ValueError):
        plan_tiles((0, 100), 64, 8)


def test_blend_weights():
    wts = blend_weights((256, 200), 64)
    assert wts.shape == (256, 200) and wts.dtype == np.float32
    assert wts.min() > 0 and wts.max() == 1.0
    np.testing.assert_allclose(wts, wts[::-1, ::-1])
    assert wts[0, 100] == pytest.approx(1 / 65) and wts[64, 100] == 1.0
    np.testing.assert_array_equal(blend_weights((5, 7), 0), np.ones((5, 7), np.float32))


def _smooth_field_image(shape) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    field = 6.0 * np.sin(2 * np.pi * xx / 350.0 + 0.3) * np.cos(2 * np.pi * yy / 280.0)
    red = np.clip(np.round(127.5 + 8.0 * field), 0, 255).astype(np.uint8)
    rgb = np.stack([red, np.zeros_like(red), np.full_like(red, 3)], axis=-1)
    return rgb, 1.0 / (1.0 + np.exp(-_logit_from_red(rgb)))


def test_tiled_semantic_has_no_seams(micro_model, monkeypatch):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p, artefact=2.0)
    shape = (700, 900)
    rgb, truth = _smooth_field_image(shape)
    tiles = plan_tiles(shape, 256, 64)
    done = []
    tiled = segment_image(p, rgb, mode="semantic", progress=lambda i, n: done.append((i, n)))
    assert done == [(i + 1, len(tiles)) for i in range(len(tiles))] and len(tiles) == 20
    untiled = segment(p, rgb, mode="semantic")
    assert tiled.labels.shape == shape and tiled.probability.dtype == np.float32
    assert len(tiled.pass_probabilities) == 2

    inner = (slice(24, -24), slice(24, -24))  # away from the image border (the oracle's edge artefact)
    diff = np.abs(tiled.probability - truth)[inner]
    # the artefact is down-weighted (not removed) near inner tile edges: worst at tile corners
    assert diff.max() < 0.05 and np.percentile(diff, 99) < 0.03
    assert np.abs(tiled.probability - untiled.probability)[inner].max() < 0.06
    # at every inner tile edge, the jump between neighbouring pixels is no larger than the field's own slope
    slope_x = np.abs(np.diff(truth, axis=1)).max()
    slope_y = np.abs(np.diff(truth, axis=0)).max()
    prob = tiled.probability
    for y0, y1, x0, x1 in tiles:
        for x in (x0, x1):
            if 0 < x < shape[1]:
                assert np.abs(prob[8:-8, x] - prob[8:-8, x - 1]).max() < slope_x + 0.01
        for y in (y0, y1):
            if 0 < y < shape[0]:
                assert np.abs(prob[y, 8:-8] - prob[y - 1, 8:-8]).max() < slope_y + 0.01
    # without blending (each tile pasted over the last) the artefact would show as seams
    pasted = np.zeros(shape, np.float32)
    for y0, y1, x0, x1 in tiles:
        pasted[y0:y1, x0:x1] = segment(p, rgb[y0:y1, x0:x1]).probability
    assert np.abs(pasted - truth)[inner].max() > 0.1


def test_tiled_instance_objects_crossing_seams_are_one_label(micro_model, monkeypatch):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p)
    install_instance_oracle(monkeypatch, p, "exact")
    shape = (700, 900)
    tiles = plan_tiles(shape, 256, 64)
    xs = sorted({t[2] for t in tiles})
    assert xs[:2] == [0, 161]  # tile 0 is x 0..256, tile 1 is x 161..417
    discs = [
        (100, 256, 18),  # centred on tile 0's right edge
        (300, 161, 18),  # centred on tile 1's left edge
        (450, 208, 15),  # in the middle of the overlap
        (600, 208, 70),  # wider than the overlap: truncated in both tiles
        (120, 600, 12),  # away from seams
        (160, 480, 20),  # crossing another vertical seam (tile 2 starts at 322, tile 3 at 483)
        (210, 700, 14),  # near a horizontal seam and a vertical one
    ]
    rgb, ids = disc_image(shape, discs)
    res = segment_image(p, rgb, mode="instance")
    assert res.labels.shape == shape and res.labels.dtype == np.uint16
    assert_sequential(res.labels)
    assert res.labels.max() == len(discs)
    for k in range(1, len(discs) + 1):
        inside = np.unique(res.labels[ids == k])
        inside = inside[inside > 0]
        assert len(inside) == 1, (k, inside)  # exactly one label per disc
    assert min(matched_iou(res.labels, ids)) > 0.85


def test_merge_instance_tiles_direct():
    shape = (60, 100)
    tiles = [(0, 60, 0, 60), (0, 60, 40, 100)]
    gt = np.zeros(shape, np.int32)
    gt[20:30, 45:56] = 1  # inside the overlap: seen whole by both tiles
    gt[5:15, 30:70] = 2  # crosses both inner edges: truncated in both
    gt[40:50, 5:15] = 3  # only tile 0
    labels = [gt[:, 0:60].copy(), gt[:, 40:100].copy()]
    # tile 1 numbers its objects differently
    remap = {0: 0, 1: 7, 2: 4, 3: 0}
    labels[1] = np.vectorize(remap.get)(labels[1])
    merged, scores = merge_instance_tiles(shape, tiles, labels, [{1: 0.5, 2: 0.6, 3: 0.7}, {7: 0.9, 4: 0.4}])
    assert merged.max() == 3 and len(scores) == 3
    for k in (1, 2, 3):
        vals = np.unique(merged[gt == k])
        assert len(vals) == 1 and vals[0] > 0
    np.testing.assert_array_equal(merged > 0, gt > 0)


def test_tiled_cancel_and_stack(micro_model, monkeypatch):
    p = Predictor(micro_model, "micro-test")
    install_semantic_oracle(monkeypatch, p)
    install_instance_oracle(monkeypatch, p, "exact")
    with pytest.raises(SegmentationCancelled):
        segment_tiled(p, np.zeros((300, 300), np.uint8), cancel=lambda: True)

    planes = [disc_image((48, 64), [(20, 20 + 10 * z, 8), (30, 50, 6)])[0] for z in range(3)]
    stack = np.stack(planes)
    progress = []
    out = segment_stack(p, stack, mode="instance", progress=lambda i, n: progress.append((i, n)))
    assert out.shape == (3, 48, 64) and out.dtype == np.uint16
    assert progress == [(1, 3), (2, 3), (3, 3)]
    ids = [set(np.unique(out[z])) - {0} for z in range(3)]
    assert all(len(s) == 2 for s in ids)
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # unique across slices
    assert sorted(set().union(*ids)) == list(range(1, 7))
    sem = segment_stack(p, stack, mode="semantic", rgb=True)
    assert sem.shape == (3, 48, 64) and set(np.unique(sem)) <= {0, 1}
    with pytest.raises(SegmentationCancelled):
        segment_stack(p, stack, cancel=lambda: True)


def test_stack_of_float_planes_is_normalised_jointly(micro_model):
    p = Predictor(micro_model, "micro-test")
    stack = np.random.default_rng(0).normal(size=(2, 30, 40)).astype(np.float32)
    stack[1] *= 10  # a brighter slice stays brighter: one stretch for the whole stack
    normed = autoseg._normalise_stack(list(stack))
    assert normed[1].std() > normed[0].std() * 3
    out = segment_stack(p, stack, mode="semantic")
    assert out.shape == (2, 30, 40)
    seg2d = segment_stack(p, stack[0], mode="semantic")
    assert seg2d.shape == (1, 30, 40)


def test_card_segment_options():
    from napari_samsp.autoseg import card_segment_options

    # every option is explicit now: the card's defaults (models/card.py), not segment()'s
    assert card_segment_options(None) == {"num_passes": 2, "refine_instances": True, "flip_views": 1}
    assert card_segment_options({"num_passes": 3, "mode": "instance"}) == {"num_passes": 3, "refine_instances": True, "flip_views": 1}
    assert card_segment_options({"num_passes": 2, "refine_instances": False, "flip_views": 4}) == {
        "num_passes": 2, "refine_instances": False, "flip_views": 4}


def test_prompt_free_segmentation_embeds_no_mirrors_it_does_not_use(micro_model):
    """A predictor whose card asks for mirror views (for clicks) embeds them only where they are used:
    not for a prompt-free run with one view; with flip_views=2, once."""
    p = Predictor(micro_model, "micro-test", flip_views=2)
    calls = []
    plane_features = p._plane_features
    p._plane_features = lambda *a, **k: calls.append(1) or plane_features(*a, **k)
    rgb, _ = disc_image((64, 80), [(30, 30, 10)])
    segment(p, rgb, mode="semantic")
    assert len(calls) == 1
    calls.clear()
    segment(p, rgb, mode="semantic", flip_views=2)
    assert len(calls) == 2  # the plane (a cache hit) and its mirror
