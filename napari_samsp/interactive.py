"""Interactive annotation logic behind the napari widget, without Qt or napari.

* :class:`StackNormaliser`: one contrast stretch for a whole stack, so every slice
  the model sees (and every cached embedding) matches what auto-segmentation used.
* :func:`prompts_on_plane`: napari-style point/box prompts (row, col[, z]) of one
  plane -> the predictor's (x, y) prompts.
* :class:`ObjectEditor`: re-decodes one object from its prompts and the previous
  low-res logits and paints it into a label plane without touching other objects.
* :class:`LabelsHistory`: a small, memory-bounded undo stack of label planes.
* :func:`propagate_object`: carries an object through a stack, slice by slice,
  prompting each slice with the grown box of the previous one (no logits: they made a blob).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .boxes import mask_to_box
from .contrast import apply_stretch, stretch_limits
from .errors import InputImageError, SamspError

__all__ = [
    "LabelsHistory",
    "ObjectEditor",
    "PropagationCancelled",
    "PromptSet",
    "StackNormaliser",
    "innermost_pixel",
    "mask_box",
    "mask_to_logits",
    "new_label_id",
    "paint_mask",
    "prompts_on_plane",
    "propagate_object",
    "spatial_shape",
]

# Logit magnitude given to a binary mask used as a dense prompt (SAM's logits are O(10)).
MASK_LOGIT = 8.0


class PropagationCancelled(SamspError):
    """Raised when the cancel callback of :func:`propagate_object` asks to stop."""


# --------------------------------------------------------------------------- images


def spatial_shape(shape: Sequence[int], rgb: bool) -> tuple[int, ...]:
    """The spatial part of an image shape (without a trailing colour axis).

    Raises:
        InputImageError: zero-sized, or not 2D / 3D (a 5D image, a 1D signal).
    """
    shape = tuple(int(s) for s in shape)
    spatial = shape[:-1] if rgb else shape
    if any(s == 0 for s in shape) or not shape:
        raise InputImageError(f"the image has zero size (shape {shape})")
    if len(spatial) not in (2, 3):
        raise InputImageError(
            f"expected a 2D image or a 3D stack, got {len(spatial)} spatial dimensions (shape {shape}); "
            "reduce it to 2D/3D first (e.g. pick one channel or time point)"
        )
    return spatial


class StackNormaliser:
    """uint8 planes for the model, stretched with percentiles of the whole image or stack.

    uint8 data passes through unchanged. Other dtypes are stretched between the
    0.5th and 99.5th percentile of all pixels (:mod:`napari_samsp.contrast`, as
    ``samsp segment`` does), so slices of a stack share one contrast and a slice
    embedded for clicking is the very slice auto-segmentation saw.

    Args:
        data: (H, W[, C]) or (Z, H, W[, C]) array (numpy or array-like).
        rgb: whether the last axis is colour (napari's ``layer.rgb``).
    """

    def __init__(self, data, rgb: bool = False) -> None:
        arr = np.asarray(data)
        self.rgb = bool(rgb)
        self.spatial = spatial_shape(arr.shape, self.rgb)
        self.is_stack = len(self.spatial) == 3
        self._data = arr
        # One stretch for the whole image or stack (napari_samsp.contrast): the same pixels as `samsp segment`.
        self.limits = stretch_limits(arr, rgb=self.rgb, stack=self.is_stack)

    @property
    def num_planes(self) -> int:
        return self.spatial[0] if self.is_stack else 1

    def raw_plane(self, z: int | None = None) -> np.ndarray:
        """The plane as stored (any dtype): what goes to the annotation store."""
        if not self.is_stack:
            return np.asarray(self._data)
        if z is None or not 0 <= z < self.spatial[0]:
            raise InputImageError(f"slice {z} is outside the stack of {self.spatial[0]} slices")
        return np.asarray(self._data[z])

    def plane(self, z: int | None = None) -> np.ndarray:
        """The plane as the model sees it: uint8, (H, W) or (H, W, C)."""
        return apply_stretch(self.raw_plane(z), self.limits)


# --------------------------------------------------------------------------- prompts


@dataclass
class PromptSet:
    """Prompts of one object on one plane, on the original pixel grid, (x, y) order."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    @property
    def first_positive(self) -> tuple[int, int] | None:
        """(row, col) of the first positive point, if any."""
        pos = np.flatnonzero(self.labels == 1)
        if not len(pos):
            return None
        x, y = self.points[pos[0]]
        return int(round(float(y))), int(round(float(x)))


def prompts_on_plane(
    points: np.ndarray | None,
    positive: np.ndarray | None,
    boxes: Sequence[np.ndarray] = (),
    z: int | None = None,
) -> PromptSet:
    """napari prompts -> a :class:`PromptSet` for one plane.

    Args:
        points: (N, 2) row, col or (N, 3) z, row, col in the image's data coordinates.
        positive: (N,) bool, True for foreground points (default all True).
        boxes: shapes as (V, 2|3) vertex arrays; the last one on the plane is the box
            (its bounding rectangle).
        z: the plane of a stack (points and boxes of other planes are ignored).
    """
    pts = np.zeros((0, 2), np.float32) if points is None or np.size(points) == 0 else np.asarray(points, np.float32)
    if pts.ndim != 2 or pts.shape[-1] not in (2, 3):
        raise ValueError(f"points must be (N, 2) or (N, 3), got shape {pts.shape}")
    pos = np.ones(len(pts), bool) if positive is None or len(pts) == 0 else np.asarray(positive, bool).reshape(-1)
    if len(pos) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(pos)} signs")
    if pts.shape[-1] == 3:
        keep = np.ones(len(pts), bool) if z is None else np.round(pts[:, 0]) == z
        pts, pos = pts[keep, 1:], pos[keep]
    box = None
    for verts in boxes:
        v = np.asarray(verts, np.float32)
        if v.ndim != 2 or len(v) == 0:
            continue
        if v.shape[-1] == 3:
            if z is not None and not np.all(np.round(v[:, 0]) == z):
                continue
            v = v[:, 1:]
        r0, c0 = v.min(axis=0)
        r1, c1 = v.max(axis=0)
        if r1 - r0 >= 1 and c1 - c0 >= 1:
            box = np.array([c0, r0, c1, r1], np.float32)
    xy = pts[:, ::-1].copy() if len(pts) else np.zeros((0, 2), np.float32)
    return PromptSet(xy.astype(np.float32), pos.astype(np.int64), box)


# --------------------------------------------------------------------------- masks


def new_label_id(labels: np.ndarray) -> int:
    """The next free label id (max + 1)."""
    return int(np.asarray(labels).max(initial=0)) + 1


def mask_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray | None:
    """(x0, y0, x1, y1) around a mask, grown by ``margin`` pixels and clipped; None when empty.

    Inclusive max, the convention of :mod:`napari_samsp.boxes` (this is :func:`~napari_samsp.boxes.mask_to_box`).
    """
    return mask_to_box(mask, margin)


def mask_to_logits(predictor, mask: np.ndarray, embedding=None) -> np.ndarray:
    """A binary mask on the grid of ``embedding`` (default: the predictor's set_image) ->
    (1, L, L) dense-prompt logits (+-MASK_LOGIT)."""
    transform = predictor.embedding_of(embedding).transform
    low = transform.mask_to_low_res(np.asarray(mask, bool), predictor.low_res_size)
    return ((low[0].numpy() * 2.0 - 1.0) * MASK_LOGIT).astype(np.float32)


def paint_mask(
    plane: np.ndarray, mask: np.ndarray, label_id: int, clear: np.ndarray | None = None, preserve: bool = True
) -> np.ndarray:
    """A copy of ``plane`` with ``mask`` painted as ``label_id``.

    ``clear`` pixels (the object's previous extent) are reset to 0 first; with
    ``preserve`` other objects are never overwritten.
    """
    out = np.array(plane, copy=True)
    if mask.shape != out.shape:
        raise InputImageError(f"mask is {mask.shape}, labels are {out.shape}")
    if clear is not None:
        out[clear & (out == label_id)] = 0
    target = mask & ((out == 0) | (out == label_id)) if preserve else mask
    out[target] = label_id
    return out


class ObjectEditor:
    """One object being segmented by prompts on one plane.

    The plane as it was when the first prompt came is kept as ``base``. If the first
    positive point lands on an existing region of ``label_id``, that connected region
    is the object being corrected: it seeds the decoder (as a dense prompt) and is
    replaced by the decoded mask. Otherwise the decoded mask is added on background.
    Every :meth:`update` decodes from the predictor's cached embedding with the
    previous low-res logits, so a click costs one decoder run.

    Args:
        predictor: a :class:`~napari_samsp.predictor.Predictor` (the model that decodes).
        plane: the current (H, W) labels of the plane.
        label_id: the id to paint.
        preserve: never overwrite other objects.
        multimask_first_click: decode a lone first click with SAM's three candidate masks and
            keep the best (right for official SAM weights, whose single-mask output is meant for
            several prompts); our fine-tuned models are trained on the single-mask output.
        confine: keep only the decoded pixels that belong to the prompted object
            (:func:`napari_samsp.local_prompts.confine_mask`: inside the drawn box, stretched to any
            positive click outside it, no specks far from the prompts), whatever the model returns.
        embedding: the plane's :class:`~napari_samsp.embedding.Embedding` (``predictor.embed``);
            None takes the predictor's set_image one, once, here.
    """

    def __init__(
        self,
        predictor,
        plane: np.ndarray,
        label_id: int,
        preserve: bool = True,
        multimask_first_click: bool = False,
        confine: bool = True,
        *,
        embedding=None,
    ) -> None:
        self.embedding = predictor.embedding_of(embedding)
        if tuple(self.embedding.original_size) != tuple(plane.shape):
            raise InputImageError(f"labels plane is {plane.shape}, the image is {tuple(self.embedding.original_size)}")
        self.predictor = predictor
        self.base = np.array(plane, copy=True)
        self.label_id = int(label_id)
        self.preserve = preserve
        self.multimask_first_click = multimask_first_click
        self.confine = confine
        self.target: np.ndarray | None = None
        self._target_decided = False
        self.logits: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.score: float | None = None
        self.painted: np.ndarray = self.base

    def _decide_target(self, prompts: PromptSet) -> None:
        if self._target_decided:
            return
        first = prompts.first_positive
        if first is None:
            return
        self._target_decided = True
        r, c = first
        h, w = self.base.shape
        if not (0 <= r < h and 0 <= c < w) or self.base[r, c] != self.label_id:
            return
        comp, _ = ndimage.label(self.base == self.label_id)
        self.target = comp == comp[r, c]
        self.logits = mask_to_logits(self.predictor, self.target, self.embedding)

    def update(self, prompts: PromptSet, restart: bool = False) -> np.ndarray:
        """Decode the object from ``prompts`` and return the painted plane.

        Args:
            restart: forget the previous logits (after a prompt was removed or moved).
        """
        if prompts.empty:
            self.mask, self.logits = None, None
            self.painted = self.base.copy()
            return self.painted
        self._decide_target(prompts)
        if restart:
            self.logits = None if self.target is None else mask_to_logits(self.predictor, self.target, self.embedding)
        n_points = len(prompts.points)
        multimask = self.multimask_first_click and self.logits is None and prompts.box is None and n_points == 1
        pred = self.predictor.predict(
            point_coords=prompts.points if n_points else None,
            point_labels=prompts.labels if n_points else None,
            box=prompts.box,
            mask_input=self.logits,
            multimask_output=multimask,
            embedding=self.embedding,
        )
        best = pred.best_index
        self.mask = pred.masks[best]
        if self.confine:
            from .local_prompts import USER_BOX_MARGIN, confine_mask

            self.mask = confine_mask(self.mask, prompts, margin=USER_BOX_MARGIN)
        self.logits = pred.logits[best : best + 1]
        self.score = float(pred.scores[best])
        self.painted = paint_mask(self.base, self.mask, self.label_id, clear=self.target, preserve=self.preserve)
        return self.painted


# --------------------------------------------------------------------------- undo


class LabelsHistory:
    """Undo stack of label snapshots: ``(plane index or None for the whole array, copy)``.

    Bounded by entry count and by bytes, oldest dropped first.
    """

    def __init__(self, max_entries: int = 20, max_bytes: int = 512 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: deque[tuple[object, int | None, np.ndarray]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, _, a in self._items)

    def push(self, owner: object, index: int | None, array: np.ndarray) -> None:
        """Remember ``array`` (copied): a plane of a stack (``index``) or the whole array (None)."""
        self._items.append((owner, index, np.array(array, copy=True)))
        while len(self._items) > self.max_entries or (len(self._items) > 1 and self.nbytes > self.max_bytes):
            self._items.popleft()

    def pop(self) -> tuple[object, int | None, np.ndarray] | None:
        return self._items.pop() if self._items else None

    def clear(self) -> None:
        self._items.clear()


# --------------------------------------------------------------------------- 3D


def innermost_pixel(mask: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of the pixel of ``mask`` farthest from its border (None when empty)."""
    m = np.asarray(mask, bool)
    if not m.any():
        return None
    rows, cols = np.nonzero(m)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    dist = ndimage.distance_transform_edt(np.pad(m[r0:r1, c0:c1], 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r0 + r), int(c0 + c)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 0.0


def _carry_to_slice(predictor, plane: np.ndarray, mask: np.ndarray, tile: int | None, overlap: int | None, use_point: bool,
                    multimask: bool = False):
    """One step of :func:`propagate_object`: the candidate on ``plane`` that overlaps the previous slice's
    ``mask`` most, as (mask in window coordinates or None, its IoU with the previous mask there, window)."""
    from .local_prompts import Window, choose_window, confine_mask, shift_prompts

    h, w = mask.shape
    box = mask_box(mask, margin=max(3.0, 0.2 * float(np.sqrt(int(mask.sum())))))
    assert box is not None
    extent = (float(box[1]), float(box[0]), float(box[3]), float(box[2]))
    win = choose_window((h, w), extent, tile, overlap or 0) if tile else Window(0, h, 0, w)
    # One view: mirror views (a card's prompt_flip_views, which help clicks) carry fewer slices
    # (docs/BENCHMARKS.md, "Mirror views"), so propagation neither embeds nor decodes them.
    emb = predictor.embed(plane[win.slices], with_mirrors=False)
    prompts = [PromptSet(box=box)]
    if use_point:
        r, c = innermost_pixel(mask)  # type: ignore[misc]
        prompts.append(PromptSet(np.array([[c, r]], np.float32), np.array([1], np.int64), box))
    prev = mask[win.slices]
    best, best_iou = None, -1.0
    for i, ps in enumerate(prompts):
        local = shift_prompts(ps, win)
        pred = predictor.predict(
            point_coords=local.points if len(local.points) else None,
            point_labels=local.labels if len(local.points) else None,
            box=local.box,
            multimask_output=multimask and i == 0,
            embedding=emb,
            flip_views=1,
        )
        for cand in pred.masks:
            cand = confine_mask(cand, local)
            score = _iou(cand, prev)
            if score > best_iou:
                best, best_iou = cand, score
    return best, best_iou, win


def propagate_object(
    predictor,
    planes: Callable[[int], np.ndarray],
    num_planes: int,
    labels: np.ndarray,
    z0: int,
    label_id: int,
    start_logits: np.ndarray | None = None,
    max_slices: int | None = None,
    min_area: int = 4,
    max_growth: float = 2.5,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    min_overlap: float = 0.2,
    min_inside: float = 0.4,
    max_on_others: float = 0.5,
    use_point: bool = True,
    multimask: bool | None = None,
    tile: int | None = None,
    overlap: int | None = None,
) -> dict[int, np.ndarray]:
    """Carry object ``label_id`` of slice ``z0`` to the neighbouring slices, both ways.

    Each next slice is prompted with the previous slice's mask box grown by
    ``max(3, 0.2 * sqrt(area))`` px, and (``use_point``) with that box plus a positive
    point at the previous mask's innermost pixel as a second prompt set. The decoder's
    masks (with ``multimask``, the box's three candidates) are confined to the prompts
    (:func:`napari_samsp.local_prompts.confine_mask`) and the one that overlaps the
    previous slice's mask most is kept: the object moves and changes size a little
    from slice to slice, it does not jump. A direction stops at the stack end, after
    ``max_slices``, or when the object vanishes or leaks: fewer than ``min_area`` px,
    an IoU with the previous slice below ``min_overlap``, less than ``min_inside`` of the
    new mask on the previous one (it moved onto a neighbour), more than ``max_on_others`` of it
    on other objects already in ``labels`` on that slice (it ran on into the object above or
    below, which 2D prompts cannot tell from this one), or a size change beyond ``max_growth``
    x either way.

    The previous slice's logits are not used as a dense prompt: with a box on a new
    slice they made SAM-style decoders return a blob (issue 11). Measured on real
    stacks by ``scripts/propagation_carry.py`` (docs/PLUGIN.md).

    Args:
        predictor: a Predictor; each slice (window) is embedded on its own, the predictor is not changed.
        planes: ``planes(z)`` -> the uint8 plane the model sees, (H, W) or (H, W, 3).
        labels: (Z, H, W) labels (read only).
        start_logits: ignored (kept for callers of the earlier version).
        multimask: decode the box with SAM's three candidate masks; None: only where they are
            trained (:func:`napari_samsp.models.build.multimask_trained`: official SAM architectures).
            Our models train the single-mask output alone, and their untrained candidates carried
            objects past their last slice (``scripts/propagation_carry.py``).
        tile, overlap: decode planes larger than ``tile`` in a window around the object
            (:func:`napari_samsp.local_prompts.choose_window`); None decodes whole planes.

    Returns:
        {z: (H, W) bool mask} for every slice reached (``z0`` excluded).
    """
    del start_logits
    mask0 = np.asarray(labels[z0]) == label_id
    if not mask0.any():
        raise InputImageError(f"label {label_id} is not on slice {z0}: nothing to propagate")
    limit = num_planes if max_slices is None else int(max_slices)
    if multimask is None:
        from .models.build import multimask_trained

        multimask = multimask_trained(predictor.model)
    todo = [d for d in (1, -1) if 0 <= z0 + d < num_planes]
    total = sum(min(limit, (num_planes - 1 - z0) if d > 0 else z0) for d in todo)
    carry = _Carry(predictor, planes, num_planes, limit, min_area, max_growth, min_overlap, min_inside,
                   use_point, multimask, tile, overlap, progress, cancel, total, labels, label_id, max_on_others)
    out: dict[int, np.ndarray] = {}
    for d in todo:
        carry.one_way(mask0, z0, d, out)
    if progress is not None and carry.done < total:
        progress(total, total)
    return out


@dataclass
class _Carry:
    """The settings and progress count of one :func:`propagate_object` call (arguments as there)."""

    predictor: object
    planes: Callable[[int], np.ndarray]
    num_planes: int
    limit: int
    min_area: int
    max_growth: float
    min_overlap: float
    min_inside: float
    use_point: bool
    multimask: bool
    tile: int | None
    overlap: int | None
    progress: Callable[[int, int], None] | None
    cancel: Callable[[], bool] | None
    total: int
    labels: np.ndarray
    label_id: int
    max_on_others: float
    done: int = 0

    def on_others(self, best: np.ndarray, z: int, win) -> float:
        """Share of the (h, w) ``best`` (window ``win`` of slice ``z``) on objects other than ``label_id``."""
        n = int(best.sum())
        if not n:
            return 0.0
        there = np.asarray(self.labels[z][win.slices])
        return int(np.count_nonzero(best & (there != 0) & (there != self.label_id))) / n

    def keeps(self, best: np.ndarray | None, best_iou: float, prev: np.ndarray, area: int) -> bool:
        """Whether the (h, w) candidate ``best`` continues the object whose (h, w) mask was ``prev`` (``area`` px)."""
        n = 0 if best is None else int(best.sum())
        inside = int(np.count_nonzero(best & prev)) / n if n else 0.0
        return not (n < self.min_area or best_iou < self.min_overlap or inside < self.min_inside
                    or n > self.max_growth * area or n * self.max_growth < area)

    def one_way(self, mask0: np.ndarray, z0: int, d: int, out: dict[int, np.ndarray]) -> None:
        """Carry the (H, W) bool ``mask0`` of slice ``z0`` in direction ``d`` (+1 / -1) into ``out``."""
        h, w = mask0.shape
        mask = mask0
        z, steps = z0 + d, 0
        while 0 <= z < self.num_planes and steps < self.limit:
            if self.cancel is not None and self.cancel():
                raise PropagationCancelled("propagation cancelled")
            area = int(mask.sum())
            best, best_iou, win = _carry_to_slice(self.predictor, np.asarray(self.planes(z)), mask, self.tile,
                                                  self.overlap, self.use_point, self.multimask)
            steps += 1
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)
            if not self.keeps(best, best_iou, mask[win.slices], area) or self.on_others(best, z, win) > self.max_on_others:
                break
            new = np.zeros((h, w), bool)
            new[win.slices] = best
            out[z] = new
            mask = new
            z += d
