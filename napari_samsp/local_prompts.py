"""Prompt hygiene and local decoding for interactive annotation, without Qt or napari.

* :func:`confine_mask`: the object decoded from prompts is kept near them. With a box,
  nothing outside the box grown by a small margin survives; disconnected components
  far from every positive point and from the box centre are dropped. This keeps any
  model's stray specks (on other objects, in the background) out of the labels and
  so out of the annotation store.
* :func:`choose_window`: the window of a large image a prompt set is decoded in. Images
  up to the auto-segmentation tile threshold are decoded whole; larger ones in the tile
  of auto-segmentation's grid (:func:`napari_samsp.autoseg.default_tiling`, the same
  pixels, so the same cached embedding) where the prompts are most central, or in a
  window fitted around prompts too large for any tile. Objects are then seen at the
  scale the model was trained for instead of shrunk ``max(H, W) / img_size`` times.
* :class:`WindowedEditor`: an :class:`~napari_samsp.interactive.ObjectEditor` on such a
  window, in full-plane coordinates.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .boxes import box_slices
from .interactive import ObjectEditor, PromptSet
from .tiling import plan_tiles

__all__ = ["Window", "WindowedEditor", "choose_window", "confine_mask", "prompt_extent", "shift_prompts"]

_EIGHT = np.ones((3, 3), bool)


class Window(NamedTuple):
    """A window (y0, y1, x0, x1) of a plane, half-open, in pixels."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def contains(self, extent: tuple[float, float, float, float], margin: float = 0.0) -> bool:
        """Whether ``extent`` (y0, x0, y1, x1) lies inside, ``margin`` px from the edges."""
        y0, x0, y1, x1 = extent
        return (
            y0 - margin >= self.y0 and x0 - margin >= self.x0 and y1 + margin <= self.y1 - 1 and x1 + margin <= self.x1 - 1
        )


# --------------------------------------------------------------------------- confinement


#: Margin of a box the user drew: none. The box is the user's statement of the object's extent, so the
#: mask shown never leaves it (issue 10: "box prompts must produce masks inside the box"); a positive
#: click outside the box stretches it (:func:`confine_mask`). Propagation keeps the grown default.
USER_BOX_MARGIN = 0.0


def _grown_box(box: np.ndarray, shape: tuple[int, int], margin: float | None) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) half-open rows/cols of the (x0, y0, x1, y1) box grown by ``margin``
    (default: 10 % of its longer side, at least 4 px), clipped to ``shape`` (:func:`napari_samsp.boxes.box_slices`)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    m = max(4.0, 0.1 * max(x1 - x0, y1 - y0)) if margin is None else float(margin)
    return box_slices(box, shape, m)


def confine_mask(
    mask: np.ndarray, prompts: PromptSet, margin: float | None = None, gap: float | None = None
) -> np.ndarray:
    """The part of a decoded (H, W) bool mask that belongs to the prompted object.

    1. With a box: pixels outside the box grown by ``margin`` (default 10 % of its
       longer side, at least 4 px; :data:`USER_BOX_MARGIN` for a box the user drew) are
       dropped. The box is first stretched to reach every positive point outside it.
    2. The anchors are the positive points and the box centre. A connected component
       (8-connected) containing an anchor, or the nearest one within ``gap`` px of an
       anchor, is the object; with a box and no component at an anchor, the largest
       component inside the box is.
    3. Components within ``gap`` px of the object (a piece split off by a thin line)
       are kept with it; everything else (specks on other objects, background
       blobs) is dropped. ``gap`` defaults to 15 % of the object's equivalent side,
       at least 2 px.

    Only negative points (no anchor, no box): the mask is returned unchanged.

    Returns:
        (H, W) bool, a subset of ``mask``.
    """
    m = np.array(mask, dtype=bool, copy=True)
    h, w = m.shape
    if prompts.box is not None:
        r0, r1, c0, c1 = _grown_box(prompts.box, (h, w), margin)
        for (x, y), lab in zip(np.asarray(prompts.points).reshape(-1, 2), np.asarray(prompts.labels).reshape(-1)):
            if lab == 1:  # a positive click outside the box says the object goes on there
                r, c = min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)
                r0, r1, c0, c1 = min(r0, r), max(r1, r + 1), min(c0, c), max(c1, c + 1)
        keep = np.zeros_like(m)
        keep[r0:r1, c0:c1] = True
        m &= keep
    anchors = [
        (int(round(float(y))), int(round(float(x))))
        for (x, y), lab in zip(np.asarray(prompts.points).reshape(-1, 2), np.asarray(prompts.labels).reshape(-1))
        if lab == 1
    ]
    if prompts.box is not None:
        x0, y0, x1, y1 = (float(v) for v in prompts.box)
        anchors.append((int(round((y0 + y1) / 2)), int(round((x0 + x1) / 2))))
    anchors = [(min(max(r, 0), h - 1), min(max(c, 0), w - 1)) for r, c in anchors]
    if not anchors or not m.any():
        return m
    comp, n = ndimage.label(m, structure=_EIGHT)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    # Nearest component to each anchor (EDT of the background carries the nearest foreground index).
    dist, (iy, ix) = ndimage.distance_transform_edt(comp == 0, return_indices=True)
    object_ids: set[int] = set()
    reach_default = max(2.0, 0.15 * float(np.sqrt(sizes[1:].max())))
    reach = reach_default if gap is None else float(gap)
    for r, c in anchors:
        if dist[r, c] <= reach:
            object_ids.add(int(comp[iy[r, c], ix[r, c]]))
    object_ids.discard(0)
    if not object_ids:
        if prompts.box is None:
            return np.zeros_like(m)
        object_ids = {int(np.argmax(sizes[1:])) + 1}
    obj = np.isin(comp, list(object_ids))
    link = max(2.0, 0.15 * float(np.sqrt(obj.sum()))) if gap is None else float(gap)
    near = ndimage.distance_transform_edt(~obj) <= link
    linked = set(np.unique(comp[near & (comp > 0)]).tolist())
    return np.isin(comp, list(object_ids | linked))


# --------------------------------------------------------------------------- windows


def prompt_extent(prompts: PromptSet) -> tuple[float, float, float, float] | None:
    """(y0, x0, y1, x1) around every point and the box of ``prompts``; None when empty."""
    ys: list[float] = []
    xs: list[float] = []
    for x, y in np.asarray(prompts.points).reshape(-1, 2):
        xs.append(float(x))
        ys.append(float(y))
    if prompts.box is not None:
        x0, y0, x1, y1 = (float(v) for v in prompts.box)
        xs += [x0, x1]
        ys += [y0, y1]
    if not xs:
        return None
    return min(ys), min(xs), max(ys), max(xs)


def choose_window(
    shape: tuple[int, int],
    extent: tuple[float, float, float, float] | None,
    tile: int,
    overlap: int,
    current: Window | None = None,
) -> Window:
    """The window of an (H, W) plane to decode prompts spanning ``extent`` (y0, x0, y1, x1) in.

    * ``max(H, W) <= tile``: the whole plane.
    * ``current`` still holds the extent (a margin of ``overlap / 4`` px from its edges): kept,
      so one object is decoded in one window while prompts are added.
    * Otherwise the tile of :func:`~napari_samsp.tiling.plan_tiles` ``(shape, tile, overlap)``
      holding the extent farthest from the tile's inner edges (image edges do not count);
      prompts wider than that get a square window of ``1.5 x`` their extent (at least
      ``tile``) centred on them, shifted inside the plane.
    """
    h, w = int(shape[0]), int(shape[1])
    whole = Window(0, h, 0, w)
    if max(h, w) <= tile or extent is None:
        return whole
    margin = overlap / 4.0
    if current is not None and current.contains(extent, margin):
        return current
    y0, x0, y1, x1 = extent
    best, best_d = None, -np.inf
    for ty0, ty1, tx0, tx1 in plan_tiles((h, w), tile, overlap):
        win = Window(ty0, ty1, tx0, tx1)
        if not win.contains(extent):
            continue
        d = min(
            y0 - ty0 if ty0 > 0 else np.inf,
            ty1 - 1 - y1 if ty1 < h else np.inf,
            x0 - tx0 if tx0 > 0 else np.inf,
            tx1 - 1 - x1 if tx1 < w else np.inf,
        )
        if d > best_d:
            best, best_d = win, d
    if best is not None and best_d >= margin:
        return best
    side = int(np.ceil(max(tile, 1.5 * max(y1 - y0, x1 - x0))))
    sh, sw = min(h, side), min(w, side)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    wy0 = int(np.clip(round(cy - sh / 2.0), 0, h - sh))
    wx0 = int(np.clip(round(cx - sw / 2.0), 0, w - sw))
    return Window(wy0, wy0 + sh, wx0, wx0 + sw)


def shift_prompts(prompts: PromptSet, window: Window) -> PromptSet:
    """``prompts`` in the coordinates of ``window`` (x, y order, like the predictor)."""
    pts = np.asarray(prompts.points, np.float32).reshape(-1, 2) - np.array([window.x0, window.y0], np.float32)
    box = None
    if prompts.box is not None:
        box = np.asarray(prompts.box, np.float32) - np.array([window.x0, window.y0, window.x0, window.y0], np.float32)
    return PromptSet(pts.astype(np.float32), np.asarray(prompts.labels, np.int64).copy(), box)


class WindowedEditor:
    """An :class:`~napari_samsp.interactive.ObjectEditor` on one window of a plane.

    Decoding uses the window's embedding (``predictor.embed(plane_rgb[window.slices])``, made by
    the caller, e.g. in a worker); prompts come and painted planes go in full-plane
    coordinates. With ``window`` the whole plane this is exactly an ObjectEditor.

    Args:
        predictor: a Predictor (the model that decodes).
        plane: the full (H, W) labels plane.
        label_id, preserve, multimask_first_click: as for ObjectEditor.
        window: where to decode.
        embedding: the window's Embedding; None takes the predictor's set_image one (compatibility).
    """

    def __init__(
        self,
        predictor,
        plane: np.ndarray,
        label_id: int,
        window: Window,
        preserve: bool = True,
        multimask_first_click: bool = False,
        *,
        embedding=None,
    ) -> None:
        self.window = window
        self.base = np.array(plane, copy=True)
        self.label_id = int(label_id)
        self.inner = ObjectEditor(
            predictor, self.base[window.slices], label_id, preserve=preserve, multimask_first_click=multimask_first_click,
            embedding=embedding,
        )
        self.painted: np.ndarray = self.base

    @property
    def mask(self) -> np.ndarray | None:
        """The decoded object (H_w, W_w) in window coordinates (None before the first update)."""
        return self.inner.mask

    @property
    def logits(self) -> np.ndarray | None:
        return self.inner.logits

    @property
    def score(self) -> float | None:
        return self.inner.score

    @property
    def target(self) -> np.ndarray | None:
        return self.inner.target

    def update(self, prompts: PromptSet, restart: bool = False) -> np.ndarray:
        """Decode from full-plane ``prompts`` and return the full painted plane."""
        local = self.inner.update(shift_prompts(prompts, self.window), restart=restart)
        out = self.base.copy()
        out[self.window.slices] = local
        self.painted = out
        return out
