"""Tests for napari_samsp.metrics: hand-computed values, brute-force cross-checks, simulated clicks, folders."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from napari_samsp import metrics as M
from napari_samsp.errors import DataLayoutError, InputImageError


def disc(shape, center_rc, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - center_rc[0]) ** 2 + (cc - center_rc[1]) ** 2 <= radius**2


def square(shape, r0, c0, side):
    m = np.zeros(shape, bool)
    m[r0 : r0 + side, c0 : c0 + side] = True
    return m


# ---------------------------------------------------------------------------- dice / iou
def test_dice_iou_hand_computed():
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    gt = np.array([[1, 0, 0], [1, 1, 0]])
    # |P|=3, |G|=3, |P∩G|=2, |P∪G|=4
    assert M.dice(pred, gt) == pytest.approx(4 / 6)
    assert M.iou(pred, gt) == pytest.approx(2 / 4)
    # label images are binarised (> 0): labels 7 and 255 are foreground
    assert M.dice(pred * 7, gt * 255) == pytest.approx(4 / 6)


def test_dice_iou_empty_conventions():
    z = np.zeros((4, 4), np.uint8)
    one = z.copy()
    one[1, 1] = 1
    assert M.dice(z, z) == 1.0 and M.iou(z, z) == 1.0
    assert M.dice(z, one) == 0.0 and M.iou(one, z) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(InputImageError):
        M.dice(np.zeros((3, 3)), np.zeros((3, 4)))


# ---------------------------------------------------------------------------- hd95
@pytest.mark.parametrize("k", [1, 3, 6])
def test_hd95_offset_squares(k):
    shape = (64, 64)
    a = square(shape, 10, 10, 20)
    b = square(shape, 10, 10 + k, 20)
    assert abs(M.hd95(a, b) - k) <= 1.0
    assert M.hd95(a, a) == 0.0
    # anisotropic spacing along the shift axis scales the answer
    assert abs(M.hd95(a, b, spacing=(1.0, 2.5)) - 2.5 * k) <= 2.5


def test_hd95_empty_conventions():
    z = np.zeros((30, 40), bool)
    a = square(z.shape, 5, 5, 4)
    assert M.hd95(z, z) == 0.0
    assert M.hd95(a, z) == pytest.approx(50.0)  # diagonal of 30 x 40
    assert M.hd95(z, a, spacing=2.0) == pytest.approx(100.0)


def _hd95_brute(a, b):
    def border(m):
        pts = []
        for r, c in zip(*np.nonzero(m)):
            nb = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
            if any(not (0 <= y < m.shape[0] and 0 <= x < m.shape[1]) or not m[y, x] for y, x in nb):
                pts.append((r, c))
        return np.array(pts, float)

    pa, pb = border(a), border(b)
    d = cdist(pa, pb)
    return np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95)


def test_hd95_matches_brute_force_including_image_edge():
    rng = np.random.default_rng(1)
    shape = (40, 50)
    for _ in range(4):
        a = disc(shape, rng.integers(0, 40, 2), rng.integers(4, 12))  # may be cut by the image edge
        b = disc(shape, rng.integers(0, 40, 2), rng.integers(4, 12)) | square(shape, 0, 0, 5)
        assert M.hd95(a, b) == pytest.approx(_hd95_brute(a, b))


# ---------------------------------------------------------------------------- instance F1
def test_instance_f1_known_scene():
    shape = (80, 120)
    gt = np.zeros(shape, np.uint16)
    pred = np.zeros(shape, np.uint16)
    a, b, c = disc(shape, (20, 20), 10), disc(shape, (20, 60), 10), disc(shape, (55, 40), 12)
    gt[a], gt[b], gt[c] = 1, 2, 3
    pred[a] = 10  # exact match
    pred[disc(shape, (20, 62), 10)] = 20  # B shifted by 2 px: still IoU > 0.5
    cols = np.arange(shape[1])[None, :]
    pred[c & (cols < 40)] = 30  # C split in two halves, the centre column dropped: IoU < 0.5 each
    pred[c & (cols > 40)] = 31
    pred[disc(shape, (60, 100), 8)] = 40  # false positive
    ious, g_ids, p_ids = M.iou_matrix(gt, pred)
    assert list(g_ids) == [1, 2, 3] and list(p_ids) == [10, 20, 30, 31, 40]
    assert ious[1, 1] > 0.5 and ious[2, 2] < 0.5 and ious[2, 3] < 0.5
    r = M.instance_f1(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 3, 1)
    assert r["precision"] == pytest.approx(2 / 5)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 1))
    assert r["mean_matched_iou"] == pytest.approx((1.0 + ious[1, 1]) / 2)
    # a lower threshold lets one half of C match
    assert M.instance_f1(pred, gt, threshold=0.4)["tp"] == 3


def test_instance_f1_matching_is_optimal_where_greedy_fails():
    shape = (10, 20)
    gt = np.zeros(shape, np.uint8)
    gt[:, 0:10], gt[:, 10:20] = 1, 2  # A, B
    pred = np.zeros(shape, np.uint8)
    pred[:, 1:12] = 1  # P: IoU(A,P)=0.75, IoU(B,P)=20/190
    pred[:, 0:1] = 2  # Q: IoU(A,Q)=0.10
    thr = 0.09
    ious, _, _ = M.iou_matrix(gt, pred)
    # greedy (highest IoU first) takes A-P and strands B and Q
    greedy, used_r, used_c = 0, set(), set()
    for idx in np.argsort(-ious, axis=None):
        i, j = np.unravel_index(idx, ious.shape)
        if ious[i, j] >= thr and i not in used_r and j not in used_c:
            greedy += 1
            used_r.add(i)
            used_c.add(j)
    assert greedy == 1
    # maximising the IoU sum alone also keeps A-P (0.75 > 0.10 + 0.105)
    r, c = linear_sum_assignment(-ious)
    assert int(np.sum(ious[r, c] >= thr)) == 1
    res = M.instance_f1(pred, gt, threshold=thr)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 0, 0)
    assert res["f1"] == 1.0


def test_instance_f1_empty_cases():
    z = np.zeros((8, 8), np.uint16)
    one = z.copy()
    one[2:4, 2:4] = 5
    e = M.instance_f1(z, z)
    assert e["f1"] == e["precision"] == e["recall"] == 1.0 and e["tp"] == e["fp"] == e["fn"] == 0
    r = M.instance_f1(z, one)  # nothing predicted
    assert (r["tp"], r["fp"], r["fn"], r["f1"], r["precision"], r["recall"]) == (0, 0, 1, 0.0, 0.0, 0.0)
    r = M.instance_f1(one, z)  # nothing to find
    assert (r["fp"], r["f1"]) == (1, 0.0)


@pytest.mark.parametrize("big_ids", [False, True])
def test_iou_matrix_agrees_with_brute_force(big_ids):
    rng = np.random.default_rng(7)
    for _ in range(3):
        g = np.kron(rng.integers(0, 6, (6, 7)), np.ones((4, 3), int))
        p = np.kron(rng.integers(0, 5, (8, 7)), np.ones((3, 3), int))[: g.shape[0], : g.shape[1]]
        g = g * 7  # non-consecutive ids
        if big_ids:
            p = np.where(p > 0, p + 10**12, 0)  # forces the np.unique path
        ious, g_ids, p_ids = M.iou_matrix(g, p)
        assert list(g_ids) == sorted(set(np.unique(g)) - {0})
        assert list(p_ids) == sorted(set(np.unique(p)) - {0})
        brute = np.zeros((len(g_ids), len(p_ids)))
        for i, gi in enumerate(g_ids):
            for j, pj in enumerate(p_ids):
                inter = np.sum((g == gi) & (p == pj))
                union = np.sum((g == gi) | (p == pj))
                brute[i, j] = inter / union
        np.testing.assert_allclose(ious, brute)


def test_iou_matrix_no_background_pixel():
    g = np.array([[1, 1], [2, 2]], np.uint64)
    p = np.array([[3, 4], [3, 4]], np.int32)
    ious, g_ids, p_ids = M.iou_matrix(g, p)
    np.testing.assert_allclose(ious, [[1 / 3, 1 / 3], [1 / 3, 1 / 3]])


def test_instance_f1_many_objects_is_fast():
    # ~400 nuclei on a DSB-sized image: must not be O(N*M*H*W)
    import time

    lab = np.kron(np.arange(1, 401).reshape(20, 20), np.ones((25, 25), int)).astype(np.uint16)
    shifted = np.roll(lab, 3, axis=1)
    t0 = time.perf_counter()
    r = M.instance_f1(shifted, lab)
    assert time.perf_counter() - t0 < 2.0
    assert r["tp"] == 400


# ---------------------------------------------------------------------------- simulated clicks
def disc_predictor(shape, radius, log):
    """Union of discs around positive clicks minus discs around negative clicks."""

    def predict(points, labels, prev_logits):
        log.append(prev_logits)
        m = np.zeros(shape, bool)
        for (x, y), lab in zip(points, labels):
            d = disc(shape, (y, x), radius)
            m = (m | d) if lab == 1 else (m & ~d)
        return m, len(log)

    return predict


def test_simulate_clicks_oracle_needs_one_click():
    shape = (40, 60)
    gt = disc(shape, (18, 25), 9)
    res = M.simulate_clicks(lambda p, lab, prev: (gt, None), gt)
    assert res["noc@85"] == 1 and res["noc@90"] == 1
    assert res["ious"] == [1.0]
    assert res["clicks"] == [[25.0, 18.0, 1]]  # xy at the disc centre, positive


def test_simulate_clicks_two_discs():
    shape = (40, 72)
    gt = disc(shape, (20, 18), 8) | disc(shape, (20, 52), 8)
    log = []
    res = M.simulate_clicks(disc_predictor(shape, 8, log), gt, max_clicks=10)
    assert res["noc@85"] >= 2 and res["noc@90"] >= 2
    assert res["noc@90"] == 2
    ious = res["ious"]
    assert all(b >= a for a, b in zip(ious, ious[1:]))
    assert ious[0] == pytest.approx(0.5) and ious[-1] == 1.0
    assert res["clicks"][1] == [52.0, 20.0, 1]  # the second click at the missed disc's centre
    assert log == [None, 1]  # previous logits are passed back


def test_simulate_clicks_negative_click_on_false_positive():
    shape = (50, 50)
    gt = disc(shape, (15, 15), 8)
    fp_blob = square(shape, 30, 30, 12)

    def predict(points, labels, prev):
        return (gt if (labels == 0).any() else gt | fp_blob), None

    res = M.simulate_clicks(predict, gt)
    x, y, lab = res["clicks"][1]
    assert lab == 0 and fp_blob[int(y), int(x)]
    assert res["ious"][-1] == 1.0 and res["noc@90"] == 2


def test_simulate_clicks_never_reaching_counts_max_clicks():
    shape = (30, 30)
    gt = disc(shape, (15, 15), 6)
    res = M.simulate_clicks(lambda p, lab, prev: (np.zeros(shape, bool), None), gt, max_clicks=5)
    assert res["noc@85"] == 5 and res["noc@90"] == 5 and len(res["ious"]) == 5
    clicked = [tuple(c[:2]) for c in res["clicks"]]
    assert len(set(clicked)) == 5  # the same pixel is not clicked twice
    assert all(c[2] == 1 for c in res["clicks"])
    s = M.noc_summary([res, {"noc@85": 1, "noc@90": 2, "ious": [0.87, 0.95]}], max_clicks=5)
    assert s["noc@85"] == pytest.approx(3.0) and s["noc@90"] == pytest.approx(3.5)
    assert s["nof@90"] == 1 and s["nof@85"] == 1
    assert s["miou_at_click"][0] == pytest.approx(0.87 / 2) and s["miou_at_click"][4] == pytest.approx(0.95 / 2)


def test_simulate_clicks_empty_gt_raises():
    with pytest.raises(InputImageError):
        M.simulate_clicks(lambda p, lab, prev: (None, None), np.zeros((5, 5), bool))


# ---------------------------------------------------------------------------- folders
def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr)


def test_evaluate_folders_data_layout(tmp_path):
    shape = (32, 40)
    a = disc(shape, (16, 20), 8).astype(np.uint8) * 255
    b = square(shape, 4, 4, 10).astype(np.uint8) * 255
    c = square(shape, 20, 20, 6).astype(np.uint8) * 255
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for stem, m in {"a": a, "b": b, "c": c}.items():
        _write(gt_dir / "masks" / f"{stem}.png", m)
        _write(gt_dir / "images" / f"{stem}.png", np.full(shape, 128, np.uint8))  # never read as masks
    _write(pred_dir / "a.png", (a > 0).astype(np.uint16))  # uint16 labels, label 1
    half_b = b.copy()
    half_b[:, 9:] = 0  # 5 of 10 columns: dice 2*50/(50+100)
    _write(pred_dir / "b.png", half_b)
    _write(pred_dir / "zzz.png", a)  # no ground truth: ignored

    res = M.evaluate_folders(pred_dir, gt_dir)
    assert res["n"] == 3 and res["missing"] == ["c"] and res["extra"] == ["zzz"]
    per = {r["stem"]: r for r in res["per_image"]}
    assert per["a"]["dice"] == 1.0 and per["a"]["hd95"] == 0.0
    assert per["b"]["dice"] == pytest.approx(2 / 3) and per["b"]["iou"] == pytest.approx(0.5)
    assert per["c"]["dice"] == 0.0 and per["c"]["hd95"] == pytest.approx(math.hypot(*shape))
    assert res["dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert res["iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    json.dumps(res, allow_nan=False)

    # the same ground truth as a plain folder of masks
    res2 = M.evaluate_folders(pred_dir, gt_dir / "masks")
    assert res2["dice"] == pytest.approx(res["dice"])


def test_evaluate_folders_instances(tmp_path):
    shape = (40, 60)
    gt = np.zeros(shape, np.uint16)
    gt[disc(shape, (10, 10), 6)] = 1
    gt[disc(shape, (10, 40), 6)] = 2
    gt[disc(shape, (30, 25), 6)] = 300
    # a binary semantic prediction: split into connected components before matching
    pred = ((gt > 0) & ~disc(shape, (30, 25), 6)).astype(np.uint8) * 255
    _write(tmp_path / "gt" / "masks" / "x.png", gt)
    _write(tmp_path / "pred" / "x.png", pred)
    res = M.evaluate_folders(tmp_path / "pred", tmp_path / "gt", instances=True)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 0, 1)
    assert res["instance_f1"] == pytest.approx(4 / 5)
    assert res["precision"] == 1.0 and res["recall"] == pytest.approx(2 / 3)
    assert res["per_image"][0]["f1"] == pytest.approx(4 / 5)
    json.dumps(res, allow_nan=False)


def test_evaluate_folders_errors(tmp_path):
    _write(tmp_path / "gt" / "masks" / "s1.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "pred" / "s1.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(InputImageError, match="s1"):
        M.evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    _write(tmp_path / "other" / "s2.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataLayoutError):
        M.evaluate_folders(tmp_path / "other", tmp_path / "gt")
    with pytest.raises(DataLayoutError):
        M.evaluate_folders(tmp_path / "nope", tmp_path / "gt")


def test_read_mask_rgb_colour_labels(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:2, :2] = (255, 0, 0)
    rgb[3:, 3:] = (0, 255, 0)
    _write(tmp_path / "m.png", rgb)
    lab = M.read_mask(tmp_path / "m.png")
    assert lab.shape == (6, 6) and len(np.unique(lab)) == 3 and lab[5, 5] != lab[0, 0] and lab[2, 2] == 0


def test_summarize():
    s = M.summarize([1.0, 3.0, float("nan")])
    assert s == {"mean": 2.0, "std": 1.0, "n": 2}


def test_no_torch_import_at_module_level():
    import subprocess
    import sys

    code = "import sys, napari_samsp.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_match_mask_sets_pairs_overlapping_masks_by_iou():
    big = np.zeros((10, 10), bool)
    big[:, :6] = True  # 60 px
    left = np.zeros((10, 10), bool)
    left[:, :3] = True  # 30 px, inside big
    shifted = np.zeros((10, 10), bool)
    shifted[:, 1:6] = True  # 50 px, inside big: IoU 50/60 with big, 20/60 with left
    rows, cols, iou = M.match_mask_sets(np.stack([big, left]), np.stack([left, shifted, big]))
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0}
    np.testing.assert_allclose(iou, [1.0, 1.0])
    rows, cols, iou = M.match_mask_sets(np.stack([left, big]), np.stack([shifted]))
    # total IoU: big~shifted (50/60) beats left~shifted (20/60)
    assert rows.tolist() == [1] and cols.tolist() == [0]
    np.testing.assert_allclose(iou, [50 / 60])
    empty = np.zeros((0, 10, 10), bool)
    assert all(x.size == 0 for x in M.match_mask_sets(empty, np.stack([big])))
    assert M.match_mask_sets(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))[2].tolist() == [1.0]
