"""Segmentation metrics: Dice, IoU, HD95, instance F1, NoC (clicks to reach an IoU), and folder evaluation.

Pure numpy/scipy (masks are read by :func:`napari_samsp.io.read_mask`, re-exported here); importing this
module never imports torch, so ``samsp evaluate`` stays fast.

Conventions (chosen so that means over a data set never see NaN):

* Binary metrics binarise their inputs with ``> 0``, so label images work as they are.
* ``dice``/``iou`` of two empty masks is **1.0** (nothing to find, nothing found).
* ``hd95`` of two empty masks is **0.0**; when exactly one is empty it is the **image diagonal**
  (in the units of ``spacing``), the largest distance two boundary points could have, a bounded penalty.
* ``instance_f1`` of two empty label images is 1.0 for every score. A ratio whose denominator is 0
  is otherwise 0.0 (e.g. precision with no predicted objects while there are ground-truth objects).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .errors import DataLayoutError, InputImageError
from .io import read_mask  # the one mask reader (colour masks -> labels), re-exported

__all__ = [
    "dice",
    "iou",
    "hd95",
    "iou_matrix",
    "match_mask_sets",
    "instance_f1",
    "next_click",
    "simulate_clicks",
    "noc",
    "noc_summary",
    "box_prompt_scores",
    "box_summary",
    "evaluate_folders",
    "summarize",
    "read_mask",
]


# ----------------------------------------------------------------------------------------------
# binary overlap metrics
# ----------------------------------------------------------------------------------------------
def _binary_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred) > 0
    g = np.asarray(gt) > 0
    if p.shape != g.shape:
        raise InputImageError(f"prediction shape {p.shape} differs from ground-truth shape {g.shape}")
    return p, g


def dice(pred, gt) -> float:
    """Dice coefficient 2|P∩G| / (|P|+|G|) of two masks (binarised with ``> 0``). Both empty -> 1.0."""
    p, g = _binary_pair(pred, gt)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & g)) / denom


def iou(pred, gt) -> float:
    """Intersection over union |P∩G| / |P∪G| of two masks (binarised with ``> 0``). Both empty -> 1.0."""
    p, g = _binary_pair(pred, gt)
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & g)) / union


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary: mask pixels with a face-neighbour outside the mask (the outside of the array counts)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred, gt, spacing: float | Sequence[float] = 1.0) -> float:
    """95th percentile of the symmetric boundary-to-boundary distances of two masks (2D or 3D).

    The distances from every boundary pixel of ``pred`` to the nearest boundary pixel of ``gt`` and
    from every boundary pixel of ``gt`` to ``pred`` are pooled and their 95th percentile is returned
    (as medpy's ``hd95``; MONAI takes the larger of the two directed percentiles instead, which is
    never smaller). Boundaries are the inner boundaries (face connectivity); the image edge counts
    as outside, so an object cut by the edge has a boundary there. Distances use exact Euclidean
    distance transforms in units of ``spacing`` (a scalar or one value per axis).

    Returns 0.0 when both masks are empty, and the image diagonal (in ``spacing`` units) when
    exactly one is empty: a bounded worst case instead of NaN, so means stay defined.
    """
    p, g = _binary_pair(pred, gt)
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (p.ndim,))
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if not (p_any and g_any):
        return float(math.sqrt(float(np.sum((np.asarray(p.shape) * sp) ** 2))))
    # Every boundary point lies inside the bounding box of P ∪ G: crop to it (plus a one-pixel
    # zero margin, which reproduces the "outside the image is background" border) to keep the
    # distance transforms small for small objects in large images.
    coords = np.nonzero(p | g)
    sl = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    p = np.pad(p[sl], 1)
    g = np.pad(g[sl], 1)
    bp, bg = _boundary(p), _boundary(g)
    d_p_to_g = ndimage.distance_transform_edt(~bg, sampling=sp)[bp]
    d_g_to_p = ndimage.distance_transform_edt(~bp, sampling=sp)[bg]
    return float(np.percentile(np.concatenate([d_p_to_g, d_g_to_p]), 95))


# ----------------------------------------------------------------------------------------------
# instance metrics
# ----------------------------------------------------------------------------------------------
def _as_labels(labels, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputImageError(f"{name} label image must hold whole numbers (got non-integer floats)")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputImageError(f"{name} label image has unsupported dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputImageError(f"{name} label image has negative labels")
    return arr


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to 0..n (0 stays background). Returns (flat indices, the original ids of 1..n)."""
    flat = labels.ravel()
    if flat.size == 0:
        return flat.astype(np.intp), np.zeros(0, dtype=np.int64)
    top = int(flat.max())
    if top <= 4 * flat.size + 65536:  # bounded lookup table: linear time, no sort
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids
    uniq, inv = np.unique(flat, return_inverse=True)
    if uniq[0] != 0:  # no background pixel: shift so index 0 stays "background"
        return inv.astype(np.intp) + 1, uniq
    return inv.astype(np.intp), uniq[1:]


def iou_matrix(gt_labels, pred_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise IoU of every ground-truth object with every predicted object.

    Computed in one pass from the contingency table of label pairs (``np.bincount`` over
    ``gt_index * (n_pred + 1) + pred_index``), so the cost is O(H*W + N*M), not O(N*M*H*W).

    Returns:
        ``(iou (N_gt, N_pred) float64, gt_ids (N_gt,), pred_ids (N_pred,))``; 0 is background and
        is not an object.
    """
    g = _as_labels(gt_labels, "ground-truth")
    p = _as_labels(pred_labels, "predicted")
    if g.shape != p.shape:
        raise InputImageError(f"prediction shape {p.shape} differs from ground-truth shape {g.shape}")
    gi, g_ids = _consecutive(g)
    pi, p_ids = _consecutive(p)
    ng, npd = g_ids.size, p_ids.size
    table = np.bincount(gi * (npd + 1) + pi, minlength=(ng + 1) * (npd + 1)).reshape(ng + 1, npd + 1)
    inter = table[1:, 1:].astype(np.float64)
    area_g = table[1:, :].sum(axis=1).astype(np.float64)
    area_p = table[:, 1:].sum(axis=0).astype(np.float64)
    union = area_g[:, None] + area_p[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out, g_ids, p_ids


def match_mask_sets(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of two sets of (possibly overlapping) masks with the largest total IoU.

    Args:
        a: (N, H, W) masks, bool or 0/1; b: (M, H, W) masks of the same size.

    Returns:
        ``(rows (K,), cols (K,), iou (K,) float)`` with K = min(N, M): ``a[rows[k]]`` is matched with
        ``b[cols[k]]`` at IoU ``iou[k]`` (two empty masks have IoU 1). Empty arrays when a set is empty.
    """
    a, b = np.asarray(a), np.asarray(b)
    if not len(a) or not len(b):
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0)
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(-iou)
    return rows, cols, iou[rows, cols]


def _ratio(num: float, den: float, other_empty: bool) -> float:
    if den > 0:
        return float(num / den)
    return 1.0 if other_empty else 0.0


def instance_f1(pred_labels, gt_labels, threshold: float = 0.5) -> dict:
    """Object-level detection scores from an optimal one-to-one matching of label images.

    A predicted and a ground-truth object may match when their IoU is ``>= threshold`` (and they
    overlap at all). The matching maximises the number of matches first and the total matched IoU
    second (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), which is what
    "optimal" should mean for a count-based score; greedy matching by highest IoU, or maximising
    the IoU sum alone, can find fewer matches when ``threshold < 0.5``. For ``threshold >= 0.5``
    matches are unique anyway (an object cannot have IoU > 0.5 with two disjoint objects).

    Labels are used as they are: a binary mask is one object. Relabel connected components first
    if a semantic mask should count as several objects (``evaluate_folders`` does).

    Returns:
        ``{"f1", "precision", "recall", "tp", "fp", "fn", "mean_matched_iou", "pq"}`` where
        ``pq`` is panoptic quality (sum of matched IoU / (tp + fp/2 + fn/2)). Empty/empty gives 1.0
        for every score; ``mean_matched_iou`` is 0.0 when nothing matched otherwise.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    ious, g_ids, p_ids = iou_matrix(gt_labels, pred_labels)
    ng, npd = g_ids.size, p_ids.size
    matched = np.zeros(0)
    if ng and npd:
        ok = ious >= threshold
        ok &= ious > 0
        rows = np.flatnonzero(ok.any(axis=1))
        cols = np.flatnonzero(ok.any(axis=0))
        if rows.size and cols.size:
            sub_ok = ok[np.ix_(rows, cols)]
            sub_iou = ious[np.ix_(rows, cols)]
            n = min(rows.size, cols.size)
            # each admissible match is worth 1 + iou/(2n); the IoU bonus sums to < 1, so the
            # count of matches is maximised first and the total IoU only breaks ties.
            cost = np.where(sub_ok, -1.0 - sub_iou / (2.0 * n), 0.0)
            r, c = linear_sum_assignment(cost)
            keep = sub_ok[r, c]
            matched = sub_iou[r[keep], c[keep]]
    tp = int(matched.size)
    fp = npd - tp
    fn = ng - tp
    both_empty = ng == 0 and npd == 0
    precision = _ratio(tp, tp + fp, both_empty)
    recall = _ratio(tp, tp + fn, both_empty)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, both_empty)
    mean_iou = float(matched.mean()) if tp else (1.0 if both_empty else 0.0)
    pq = _ratio(float(matched.sum()), tp + 0.5 * fp + 0.5 * fn, both_empty)
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "tp": tp,
        "fp": int(fp),
        "fn": int(fn),
        "mean_matched_iou": mean_iou,
        "pq": pq,
    }


# ----------------------------------------------------------------------------------------------
# NoC: simulated clicks
# ----------------------------------------------------------------------------------------------
PredictFn = Callable[[np.ndarray, np.ndarray, object], tuple]


def _inner_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the region's boundary; the image edge counts as boundary."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def next_click(gt: np.ndarray, pred: np.ndarray, clicked: np.ndarray | None = None) -> tuple[int, int, bool] | None:
    """RITM/SAM clicker: the error pixel deepest inside its error region.

    Args:
        gt, pred: (H, W) bool object and prediction.
        clicked: (H, W) bool pixels clicked before (not clicked again while other error pixels remain).

    Returns:
        (row, col, positive), or None when the prediction is exact. The simulated user of
        :func:`simulate_clicks`, and the corrective clicker of interactive training
        (:func:`napari_samsp.finetune.prompts.corrective_clicks`).
    """
    if clicked is None:
        clicked = np.zeros_like(gt)
    fn = gt & ~pred
    fp = pred & ~gt
    if not fn.any() and not fp.any():
        return None
    dt_fn = _inner_distance(fn)
    dt_fp = _inner_distance(fp)
    # never click the same pixel twice, unless no other error pixel is left
    m_fn = np.where(clicked, 0.0, dt_fn)
    m_fp = np.where(clicked, 0.0, dt_fp)
    if m_fn.max() == 0 and m_fp.max() == 0:
        m_fn, m_fp = dt_fn, dt_fp
    positive = m_fn.max() > m_fp.max()
    dt = m_fn if positive else m_fp
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c), bool(positive)


def _target_key(t: float) -> str:
    return f"noc@{int(round(t * 100))}"


def simulate_clicks(
    predict: PredictFn,
    gt,
    max_clicks: int = 20,
    iou_targets: Sequence[float] = (0.85, 0.90),
    first_click: str = "center",
) -> dict:
    """Number of clicks (NoC) an automatic user needs to reach target IoUs, the RITM/SAM protocol.

    Args:
        predict: ``predict(points (P, 2) float xy = (col, row), labels (P,) int 1/0, prev_logits)``
            returning ``(mask (H, W), logits)``. ``prev_logits`` is None on the first click and
            then whatever the previous call returned (e.g. SAM's low-res mask logits).
        gt: the (H, W) ground-truth object (binarised with ``> 0``); must not be empty.
        max_clicks: the click budget.
        iou_targets: the IoUs to report NoC for; the simulation stops once the largest is reached.
        first_click: ``"center"``: the first click is positive at the object pixel farthest from its
            boundary (maximum of the distance transform; the image edge counts as boundary).

    Each later click goes into the error region whose interior point lies farthest from the
    region's boundary (the image edge counts as boundary), at that point: positive in a false
    negative region, negative in a false positive region. "Largest" error region is thus measured
    by depth, as in RITM's clicker, so a thick miss beats a long thin sliver along the boundary.
    Pixels already clicked are not clicked again while other error pixels remain.

    Returns:
        ``{"noc@85": int, "noc@90": int, ..., "ious": [IoU after each click], "clicks": [[x, y, label], ...]}``
        where ``noc@T`` is the first click count with IoU >= T, or ``max_clicks`` if never reached.
    """
    g = np.asarray(gt) > 0
    if g.ndim != 2:
        raise InputImageError(f"simulate_clicks needs a 2D ground-truth mask, got shape {g.shape}")
    if not g.any():
        raise InputImageError("ground-truth mask is empty: there is no object to click on")
    if max_clicks < 1:
        raise ValueError("max_clicks must be at least 1")
    if first_click != "center":
        raise ValueError(f"unknown first_click {first_click!r}; supported: 'center'")
    targets = sorted(float(t) for t in iou_targets)
    if not targets:
        raise ValueError("iou_targets must not be empty")

    clicked = np.zeros_like(g)
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    ious: list[float] = []
    logits = None

    dt = _inner_distance(g)
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    click: tuple[int, int, bool] | None = (int(r), int(c), True)
    while click is not None and len(ious) < max_clicks:
        r, c, positive = click
        clicked[r, c] = True
        points.append((float(c), float(r)))
        labels.append(1 if positive else 0)
        out = predict(np.asarray(points, dtype=np.float64), np.asarray(labels, dtype=np.int64), logits)
        mask, logits = out
        mask = np.asarray(mask) > 0
        if mask.shape != g.shape:
            raise InputImageError(f"predict returned a mask of shape {mask.shape}, expected {g.shape}")
        ious.append(iou(mask, g))
        if ious[-1] >= targets[-1]:
            break
        click = next_click(g, mask, clicked)

    result: dict = {}
    for t in targets:
        reached = [i + 1 for i, v in enumerate(ious) if v >= t]
        result[_target_key(t)] = int(reached[0]) if reached else int(max_clicks)
    result["ious"] = [float(v) for v in ious]
    result["clicks"] = [[float(x), float(y), int(lab)] for (x, y), lab in zip(points, labels)]
    return result


noc = simulate_clicks
"""Alias of :func:`simulate_clicks` (the name in docs/DEVELOPING.md)."""


def noc_summary(results: Iterable[dict], max_clicks: int | None = None) -> dict:
    """Means over :func:`simulate_clicks` results.

    Returns ``{"n", "noc@85": mean, ..., "nof@85": number of objects never reaching 85%, ...,
    "miou_at_click": [mean IoU after click k]}``. For the IoU curve a run that stopped early keeps
    its last IoU for the remaining clicks (it reached the target; more clicks would not be made).
    ``max_clicks`` sets the curve length and the failure count (default: the longest run).
    """
    results = list(results)
    out: dict = {"n": len(results)}
    if not results:
        return out
    keys = sorted({k for r in results for k in r if k.startswith("noc@")}, key=lambda k: int(k[4:]))
    length = max_clicks or max(len(r["ious"]) for r in results)
    for k in keys:
        vals = [r[k] for r in results if k in r]
        out[k] = float(np.mean(vals))
        t = int(k[4:]) / 100.0
        out["nof@" + k[4:]] = int(sum(1 for r in results if not any(v >= t for v in r["ious"])))
    curves = []
    for r in results:
        ious = list(r["ious"])[:length] or [0.0]
        curves.append(ious + [ious[-1]] * (length - len(ious)))
    out["miou_at_click"] = [float(v) for v in np.mean(np.asarray(curves, dtype=float), axis=0)]
    for k in (1, 3, 5):
        if k <= length:
            out[f"iou@{k}"] = out["miou_at_click"][k - 1]
    return out


def box_prompt_scores(mask, gt, box: Sequence[float]) -> dict:
    """How well one box prompt was followed: IoU with the object and the share of the mask outside the box.

    Args:
        mask: (H, W) predicted mask (``> 0``).
        gt: (H, W) ground-truth object (``> 0``).
        box: x0, y0, x1, y1 in pixel indices, both ends inclusive (what
            :func:`napari_samsp.interactive.mask_box` returns and the plugin sends).

    Returns:
        ``{"iou": float, "outside": float}``; ``outside`` is the fraction of predicted pixels whose
        centre lies outside the box (0.0 for an empty prediction).
    """
    m, g = _binary_pair(mask, gt)
    x0, y0, x1, y1 = (float(v) for v in box)
    rows = np.arange(m.shape[0])[:, None]
    cols = np.arange(m.shape[1])[None, :]
    inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
    n = int(m.sum())
    return {"iou": iou(m, g), "outside": float((m & ~inside).sum() / n) if n else 0.0}


def box_summary(results: Iterable[dict]) -> dict:
    """Means of :func:`box_prompt_scores` results: ``{"n", "box_iou", "box_outside", "box_outside_max"}``."""
    results = list(results)
    if not results:
        return {"n": 0}
    ious = [r["iou"] for r in results]
    out = [r["outside"] for r in results]
    return {"n": len(results), "box_iou": float(np.mean(ious)), "box_outside": float(np.mean(out)),
            "box_outside_max": float(np.max(out))}


# ----------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------
def summarize(values: Iterable[float]) -> dict:
    """``{"mean", "std", "n"}`` of finite values (population std; NaN mean/std when there are none)."""
    arr = np.asarray([float(v) for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def _mask_dir(root: Path) -> Path:
    return root / "masks" if (root / "masks").is_dir() else root


def _pngs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}


def _instances(labels: np.ndarray) -> np.ndarray:
    """A mask with one non-zero value is semantic: split it into connected components (8-connectivity)."""
    values = np.unique(labels)
    values = values[values != 0]
    if values.size <= 1:
        lab, _ = ndimage.label(labels > 0, structure=np.ones((3, 3), dtype=bool))
        return lab
    return labels


def _image_row(stem: str, gt_path: Path, pred_path: Path | None, instances: bool, threshold: float) -> dict:
    """One image's row of :func:`evaluate_folders`; no prediction counts as an empty one."""
    gt = read_mask(gt_path)
    if pred_path is not None:
        pred = read_mask(pred_path)
        if pred.shape != gt.shape:
            raise InputImageError(f"{stem}: prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    else:
        pred = np.zeros_like(gt)
    row = {"stem": stem, "dice": dice(pred, gt), "iou": iou(pred, gt), "hd95": hd95(pred, gt)}
    if instances:
        inst = instance_f1(_instances(pred), _instances(gt), threshold=threshold)
        row.update(
            f1=inst["f1"], precision=inst["precision"], recall=inst["recall"],
            mean_matched_iou=inst["mean_matched_iou"], pq=inst["pq"],
            tp=inst["tp"], fp=inst["fp"], fn=inst["fn"],
        )
    return row


def _summary(per_image: list[dict], instances: bool, threshold: float) -> dict:
    """Means (and ``std``) over the rows, plus the pooled instance counts: :func:`evaluate_folders`'s head."""
    out: dict = {"n": len(per_image)}
    std: dict = {}
    names = [("dice", "dice"), ("iou", "iou"), ("hd95", "hd95")]
    if instances:
        names += [("instance_f1", "f1"), ("precision", "precision"), ("recall", "recall"),
                  ("mean_matched_iou", "mean_matched_iou"), ("pq", "pq")]
    for key, col in names:
        s = summarize(r[col] for r in per_image)
        out[key] = s["mean"]
        std[key] = s["std"]
    if instances:
        tp = sum(r["tp"] for r in per_image)
        fp = sum(r["fp"] for r in per_image)
        fn = sum(r["fn"] for r in per_image)
        out.update(tp=int(tp), fp=int(fp), fn=int(fn))
        out["instance_f1_pooled"] = _ratio(2 * tp, 2 * tp + fp + fn, tp + fp + fn == 0)
        out["iou_threshold"] = float(threshold)
    out["std"] = std
    return out


def evaluate_folders(pred_dir, gt_dir, instances: bool = False, threshold: float = 0.5) -> dict:
    """Compare predicted masks with ground truth, matched by file stem; the ``samsp evaluate`` back end.

    Args:
        pred_dir: folder of ``<stem>.png`` predictions (``samsp segment`` output). A ``masks/``
            subfolder is used instead when present.
        gt_dir: a data-layout folder (``DIR/masks/<stem>.png``) or a plain folder of ``<stem>.png``.
        instances: also compute instance F1 at IoU ``threshold``. Masks with a single non-zero value
            (binary 0/255 or 0/1) are split into 8-connected components first; label images are
            used as they are.

    Ground-truth stems without a prediction count as empty predictions and are listed in
    ``"missing"``; predictions without ground truth are ignored and listed in ``"extra"``.

    Returns:
        a JSON-able dict ``{"n", "dice", "iou", "hd95", ["instance_f1", "precision", "recall",
        "mean_matched_iou", "pq", "tp", "fp", "fn", "instance_f1_pooled"], "std": {...},
        "per_image": [{"stem", "dice", "iou", "hd95", ...}], "missing": [...], "extra": [...]}``.
        ``tp``/``fp``/``fn`` are totals and ``instance_f1_pooled`` is F1 from those totals
        (every object weighs the same, whereas ``instance_f1`` weighs every image the same).

    Raises:
        DataLayoutError: a folder is missing, or no stem has both ground truth and a prediction.
        InputImageError: a prediction and its ground truth differ in shape (the message names the stem).
    """
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    for name, root in (("prediction", pred_root), ("ground-truth", gt_root)):
        if not root.is_dir():
            raise DataLayoutError(f"{name} folder {root} does not exist")
    gt_files = _pngs(_mask_dir(gt_root))
    pred_files = _pngs(_mask_dir(pred_root))
    if not gt_files:
        raise DataLayoutError(f"no ground-truth masks (*.png) in {_mask_dir(gt_root)}")
    common = sorted(set(gt_files) & set(pred_files))
    if not common:
        raise DataLayoutError(
            f"no file stem is in both {_mask_dir(pred_root)} and {_mask_dir(gt_root)}; "
            "predictions must be named <stem>.png after the ground-truth masks"
        )
    missing = sorted(set(gt_files) - set(pred_files))
    extra = sorted(set(pred_files) - set(gt_files))

    per_image = [_image_row(stem, gt_files[stem], pred_files.get(stem), instances, threshold) for stem in sorted(gt_files)]
    out = _summary(per_image, instances, threshold)
    out["per_image"] = per_image
    out["missing"] = missing
    out["extra"] = extra
    return out


# Public name for recipes (training/evaluate_model.py): a semantic mask as connected-component instances.
as_instances = _instances
