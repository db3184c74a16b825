"""Interactive evaluation: the standard clicker, IoU after k clicks, box-prompt IoU and spill."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_samsp import metrics as M
from napari_samsp.io import list_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))


def _square(shape, r0, c0, side):
    m = np.zeros(shape, bool)
    m[r0 : r0 + side, c0 : c0 + side] = True
    return m


@pytest.mark.parametrize("fn_side, fp_side, positive", [(21, 9, True), (7, 15, False)])
def test_clicker_clicks_the_innermost_pixel_of_the_larger_error_region(fn_side, fp_side, positive):
    shape = (60, 80)
    gt = _square(shape, 5, 5, 25)
    missed = _square(shape, 5, 5, fn_side)  # false negative: a corner of the object left out
    spill = _square(shape, 40, 50, fp_side)  # false positive: a blob elsewhere
    pred = (gt & ~missed) | spill
    seen = []

    def predict(points, labels, prev):
        seen.append((points.copy(), labels.copy()))
        return (pred if len(seen) == 1 else gt), None

    res = M.simulate_clicks(predict, gt, max_clicks=3)
    x, y, lab = res["clicks"][1]
    region, side, r0, c0 = (missed, fn_side, 5, 5) if positive else (spill, fp_side, 40, 50)
    assert lab == int(positive)
    # the innermost pixel of an odd square is its centre
    assert (int(y), int(x)) == (r0 + side // 2, c0 + side // 2)
    assert region[int(y), int(x)]
    # the clicker passes every click so far, in order
    assert len(seen[1][0]) == 2 and seen[1][1].tolist() == [1, int(positive)]


def test_clicker_prefers_a_deep_miss_over_a_long_thin_sliver():
    """Error size is measured by depth (RITM / SAM): a thin false-positive rim along the boundary
    has more pixels than a 9x9 miss but the click still goes into the miss."""
    shape = (64, 64)
    gt = _square(shape, 10, 10, 40)
    missed = _square(shape, 20, 20, 9)
    rim = _square(shape, 9, 9, 42) & ~gt  # 1 px ring around the object: 164 pixels > 81
    pred = (gt & ~missed) | rim
    res = M.simulate_clicks(lambda p, lab, prev: (pred if len(p) == 1 else gt, None), gt, max_clicks=3)
    x, y, lab = res["clicks"][1]
    assert lab == 1 and (int(y), int(x)) == (24, 24)


def test_noc_summary_reports_iou_after_1_3_5_clicks():
    runs = [{"noc@85": 3, "noc@90": 20, "ious": [0.1, 0.5, 0.86, 0.88, 0.89]},
            {"noc@85": 1, "noc@90": 1, "ious": [0.95]}]
    s = M.noc_summary(runs, max_clicks=20)
    assert s["iou@1"] == pytest.approx(0.525)
    assert s["iou@3"] == pytest.approx((0.86 + 0.95) / 2)
    assert s["iou@5"] == pytest.approx((0.89 + 0.95) / 2)


def test_box_prompt_scores_iou_and_outside_fraction():
    shape = (40, 40)
    gt = _square(shape, 10, 10, 10)
    box = (10, 10, 19, 19)  # inclusive pixel indices, as interactive.mask_box returns
    assert M.box_prompt_scores(gt, gt, box) == {"iou": 1.0, "outside": 0.0}
    spill = gt | _square(shape, 10, 20, 10)  # twice the object, the extra half right of the box
    r = M.box_prompt_scores(spill, gt, box)
    assert r["iou"] == pytest.approx(0.5) and r["outside"] == pytest.approx(0.5)
    assert M.box_prompt_scores(np.zeros(shape, bool), gt, box) == {"iou": 0.0, "outside": 0.0}
    s = M.box_summary([r, {"iou": 1.0, "outside": 0.0}])
    assert s == {"n": 2, "box_iou": 0.75, "box_outside": 0.25, "box_outside_max": 0.5}


def test_evaluate_model_box_on_uses_tight_boxes_per_object(tmp_path):
    import imageio.v3 as iio

    import evaluate_model as E

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    lab = np.zeros((32, 32), np.uint16)
    lab[2:8, 2:8] = 1
    lab[15:30, 10:20] = 2
    iio.imwrite(tmp_path / "images" / "a.png", np.zeros((32, 32, 3), np.uint8))
    iio.imwrite(tmp_path / "masks" / "a.png", lab)
    boxes = []

    class Spill:
        """Predicts the object's box plus a column to its right."""

        def box_predictor(self, image):
            def predict(box):
                boxes.append(tuple(int(v) for v in box))
                x0, y0, x1, y1 = (int(v) for v in box)
                m = np.zeros((32, 32), bool)
                m[y0 : y1 + 1, x0 : x1 + 2] = True
                return m

            return predict

    out = E.box_on(Spill(), list_pairs(tmp_path), instance_set=True, images=1, per_image=5)
    assert sorted(boxes) == [(2, 2, 7, 7), (10, 15, 19, 29)]
    assert out["n"] == 2
    # object 1: 36 px in the box + 6 outside; object 2: 150 + 15
    assert out["box_outside"] == pytest.approx((6 / 42 + 15 / 165) / 2)
    assert out["box_iou"] == pytest.approx((36 / 42 + 150 / 165) / 2)


def test_sam_segmenter_box_prompt_runs_the_predictor(micro_model):
    import evaluate_model as E

    seg = E.SamSegmenter(micro_model, "micro-test")
    predict = seg.box_predictor(np.full((50, 60, 3), 100, np.uint8))
    mask = predict(np.array([5, 5, 30, 40], np.float32))
    assert mask.shape == (50, 60) and mask.dtype == bool


def test_sam_segmenter_clicks_as_shown_are_the_editors_confined_masks(micro_model):
    """``clicks="shown"`` scores what the plugin paints: the ObjectEditor's mask, a subset of the
    model's raw mask, confined to the object around the clicks; the raw view is the model's mask."""
    import evaluate_model as E
    from napari_samsp.interactive import ObjectEditor, PromptSet
    from napari_samsp.sample_data_gen import synthetic_nuclei

    image, _ = synthetic_nuclei((64, 64), n=4, seed=0)
    points, labels = np.array([[20.0, 30.0]], np.float32), np.array([1])
    raw_seg = E.SamSegmenter(micro_model, "micro-test")
    raw_mask, raw_logits = raw_seg.click_predictor(image)(points, labels, None)
    shown_seg = E.SamSegmenter(micro_model, "micro-test", clicks="shown")
    predict = shown_seg.click_predictor(image)
    shown, logits = predict(points, labels, None)
    editor = ObjectEditor(shown_seg.predictor, np.zeros((64, 64), np.uint32), 1, embedding=shown_seg.predictor.embed(image))
    np.testing.assert_array_equal(shown, editor.update(PromptSet(points, labels)) == 1)
    assert not (shown & ~raw_mask).any()
    # a second click continues the same object (the editor's logits go back in)
    two = predict(np.array([[20.0, 30.0], [40.0, 40.0]], np.float32), np.array([1, 0]), logits)[0]
    assert two.shape == (64, 64) and two.dtype == bool
    with pytest.raises(ValueError, match="clicks"):
        E.SamSegmenter(micro_model, "micro-test", clicks="other")


def test_sam_segmenter_decodes_prompts_with_the_cards_mirror_views(micro_model):
    """``prompt_flip_views``: clicks and boxes go through a mirroring predictor (the editor's masks
    are those of ``Predictor(flip_views=2)``); prompt-free segmentation keeps the plain one."""
    import evaluate_model as E
    from napari_samsp.interactive import ObjectEditor, PromptSet
    from napari_samsp.predictor import Predictor
    from napari_samsp.sample_data_gen import synthetic_nuclei

    image, _ = synthetic_nuclei((64, 64), n=4, seed=0)
    points, labels = np.array([[20.0, 30.0]], np.float32), np.array([1])
    seg = E.SamSegmenter(micro_model, "micro-test", clicks="shown", prompt_flip_views=2)
    assert seg.prompt_predictor.flip_views == 2 and seg.predictor.flip_views == 1
    shown, _ = seg.click_predictor(image)(points, labels, None)
    mirrored = Predictor(micro_model, "micro-test", flip_views=2)
    editor = ObjectEditor(mirrored, np.zeros((64, 64), np.uint32), 1, embedding=mirrored.embed(image))
    np.testing.assert_array_equal(shown, editor.update(PromptSet(points, labels)) == 1)
    box = np.array([5, 5, 40, 50], np.float32)
    np.testing.assert_array_equal(seg.box_predictor(image)(box), mirrored.predict(box=box, embedding=mirrored.embed(image)).masks[0])


def test_click_gallery_shows_the_editors_mask_after_each_simulated_click(micro_model):
    """scripts/click_gallery.py draws, for each click, exactly what the plugin's ObjectEditor paints
    for the simulated user's clicks so far (replayed here click by click)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import click_gallery
    import evaluate_model as E

    from napari_samsp.interactive import ObjectEditor, PromptSet
    from napari_samsp.sample_data_gen import synthetic_nuclei

    image, gt = synthetic_nuclei((64, 64), n=4, seed=0)
    obj = gt == np.unique(gt[gt > 0])[0]
    segmenter = E.SamSegmenter(micro_model, "micro-test", clicks="shown")
    predictor = segmenter.predictor
    masks, run = click_gallery.click_masks(segmenter, image, obj, clicks=3)
    assert len(masks) == len(run["ious"]) >= 1
    editor = ObjectEditor(predictor, np.zeros((64, 64), np.uint32), 1, embedding=predictor.embed(image))
    for k, mask in enumerate(masks, start=1):
        clicks = np.asarray(run["clicks"][:k])
        painted = editor.update(PromptSet(clicks[:, :2].astype(np.float32), clicks[:, 2].astype(np.int64))) == 1
        np.testing.assert_array_equal(mask, painted)
        assert M.iou(mask, obj) == pytest.approx(run["ious"][k - 1])
