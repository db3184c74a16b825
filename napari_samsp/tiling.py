"""Tiling of large images: tile plans, blending weights, and merging instance labels across tiles.

Pure numpy/scipy; the model-facing part is :func:`napari_samsp.autoseg.segment_tiled`.

Why tile: the model sees every image resized so its longest side is ``img_size``.
A 2000 px image through a 256 px model is shrunk 8x, and a 10 px nucleus
becomes a speck below the decoder's resolution. Tiling keeps the shrink factor
bounded (2x with the default tile of ``2 * img_size``, see ``autoseg``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

Tile = tuple[int, int, int, int]  # y0, y1, x0, x1

__all__ = ["Tile", "blend_weights", "merge_instance_tiles", "plan_tiles"]


def _axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    n = -(-(length - overlap) // step)  # ceil: enough tiles for >= overlap between neighbours
    n = max(n, 2)
    # Spread evenly from 0 to length - tile; floor keeps every gap <= step.
    return [(i * (length - tile)) // (n - 1) for i in range(n)]


def plan_tiles(shape: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Tiles (y0, y1, x0, x1) of side ``tile`` covering an (H, W) image, neighbours overlapping >= ``overlap``.

    Tiles are spread evenly, so the last one ends exactly at the image border and
    no tile is smaller than ``tile`` (unless the image is). Row-major order.
    """
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"cannot tile an empty image of shape {shape}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    ys = _axis_starts(h, tile, overlap)
    xs = _axis_starts(w, tile, overlap)
    return [(y, min(h, y + tile), x, min(w, x + tile)) for y in ys for x in xs]


def blend_weights(tile_shape: tuple[int, int], overlap: int) -> np.ndarray:
    """(h, w) float32 weights: linear ramps over ``overlap`` pixels from each edge, 1 inside.

    The weights are strictly positive (the ramp starts at ``1 / (overlap + 1)``),
    so normalising a weighted sum by the summed weights is defined everywhere and
    equals the tile's own value where only one tile covers a pixel. Blending
    neighbouring tiles' probabilities this way leaves no seam.
    """
    h, w = int(tile_shape[0]), int(tile_shape[1])

    def ramp(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)
        if overlap <= 0:
            return np.ones(n, np.float32)
        return np.minimum(1.0, (d + 1.0) / (overlap + 1.0)).astype(np.float32)

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


@dataclass
class _Piece:
    """One object as segmented in one tile, in global coordinates."""

    tile: int
    local_id: int
    y0: int
    x0: int
    mask: np.ndarray  # bool crop at (y0, x0)
    score: float
    truncated: bool  # touches an edge of its tile that is not an image edge
    centrality: float  # distance from the centroid to the nearest inner tile edge
    members: list[int] = field(default_factory=list)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _pieces(t: int, tile: Tile, labels: np.ndarray, scores: dict[int, float], shape: tuple[int, int]) -> list[_Piece]:
    y0, y1, x0, x1 = tile
    h, w = shape
    inner = {"top": y0 > 0, "bottom": y1 < h, "left": x0 > 0, "right": x1 < w}
    th, tw = labels.shape
    out = []
    for idx, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        lid = idx + 1
        mask = labels[sl] == lid
        if not mask.any():
            continue
        ys, xs = sl
        truncated = (
            (inner["top"] and ys.start == 0)
            or (inner["bottom"] and ys.stop == th)
            or (inner["left"] and xs.start == 0)
            or (inner["right"] and xs.stop == tw)
        )
        cy, cx = ndimage.center_of_mass(mask)
        cy += ys.start
        cx += xs.start
        dists = [np.inf]
        if inner["top"]:
            dists.append(cy)
        if inner["bottom"]:
            dists.append(th - 1 - cy)
        if inner["left"]:
            dists.append(cx)
        if inner["right"]:
            dists.append(tw - 1 - cx)
        out.append(
            _Piece(
                tile=t,
                local_id=lid,
                y0=y0 + ys.start,
                x0=x0 + xs.start,
                mask=mask,
                score=float(scores.get(lid, np.nan)),
                truncated=bool(truncated),
                centrality=float(min(dists)),
            )
        )
    return out


def _union_masks(pieces: list[_Piece]) -> tuple[int, int, np.ndarray]:
    y0 = min(p.y0 for p in pieces)
    x0 = min(p.x0 for p in pieces)
    y1 = max(p.y0 + p.mask.shape[0] for p in pieces)
    x1 = max(p.x0 + p.mask.shape[1] for p in pieces)
    m = np.zeros((y1 - y0, x1 - x0), bool)
    for p in pieces:
        m[p.y0 - y0 : p.y0 - y0 + p.mask.shape[0], p.x0 - x0 : p.x0 - x0 + p.mask.shape[1]] |= p.mask
    return y0, x0, m


def merge_instance_tiles(
    shape: tuple[int, int],
    tiles: list[Tile],
    tile_labels: list[np.ndarray],
    tile_scores: list[dict[int, float]] | None = None,
    iou_threshold: float = 0.5,
    min_kept_fraction: float = 0.5,
) -> tuple[np.ndarray, dict[int, float]]:
    """Merge per-tile instance labels into one (H, W) int32 label image with one label per object.

    1. Copies of one object in overlapping tiles are matched: two objects whose
       IoU, measured inside the tiles' overlap region, exceeds ``iou_threshold``
       are the same object (transitively, over any number of tiles).
    2. Each matched group is drawn once: from its most central copy that does
       not touch an inner tile edge (a complete copy); an object larger than the
       overlap has no complete copy and is drawn as the union of its truncated copies.
    3. Groups are painted most central first onto free pixels only; a group that
       finds less than ``min_kept_fraction`` of its pixels free is a duplicate
       (e.g. split in one tile, whole in another) and is dropped.

    Returns:
        labels (H, W) int32, 0 background, ids 1..N; and the score of each id.
    """
    if len(tiles) != len(tile_labels):
        raise ValueError("one label image per tile is needed")
    h, w = int(shape[0]), int(shape[1])
    pieces = _all_pieces((h, w), tiles, tile_labels, tile_scores or [{} for _ in tiles])
    index = {(p.tile, p.local_id): i for i, p in enumerate(pieces)}
    uf = _UnionFind(len(pieces))
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            for ia, ib in _matched_ids(tiles[a], tiles[b], tile_labels[a], tile_labels[b], iou_threshold):
                uf.union(index[(a, ia)], index[(b, ib)])
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(uf.find(i), []).append(i)
    candidates = [_group_candidate([pieces[i] for i in members]) for members in groups.values()]
    candidates.sort(key=lambda c: c[0], reverse=True)
    return _paint_candidates((h, w), candidates, min_kept_fraction)


def _all_pieces(shape: tuple[int, int], tiles: list[Tile], tile_labels: list[np.ndarray],
                tile_scores: list[dict[int, float]]) -> list[_Piece]:
    """The objects of every tile in tile order; each tile's (h, w) labels must match the tile's size."""
    pieces: list[_Piece] = []
    for t, (tile, lab) in enumerate(zip(tiles, tile_labels)):
        y0, y1, x0, x1 = tile
        if lab.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"tile {t} labels are {lab.shape}, the tile is {(y1 - y0, x1 - x0)}")
        pieces.extend(_pieces(t, tile, np.asarray(lab), tile_scores[t], shape))
    return pieces


def _matched_ids(ta: Tile, tb: Tile, lab_a: np.ndarray, lab_b: np.ndarray,
                 iou_threshold: float) -> list[tuple[int, int]]:
    """Pairs (id in tile a, id in tile b) whose IoU inside the two tiles' overlap exceeds ``iou_threshold``.

    ``lab_a``/``lab_b`` are the tiles' (h, w) labels; no pairs when the tiles do not overlap.
    """
    ay0, ay1, ax0, ax1 = ta
    by0, by1, bx0, bx1 = tb
    oy0, oy1, ox0, ox1 = max(ay0, by0), min(ay1, by1), max(ax0, bx0), min(ax1, bx1)
    if oy0 >= oy1 or ox0 >= ox1:
        return []
    la = np.asarray(lab_a)[oy0 - ay0 : oy1 - ay0, ox0 - ax0 : ox1 - ax0].astype(np.int64).ravel()
    lb = np.asarray(lab_b)[oy0 - by0 : oy1 - by0, ox0 - bx0 : ox1 - bx0].astype(np.int64).ravel()
    both = (la > 0) & (lb > 0)
    if not both.any():
        return []
    area_a = dict(zip(*np.unique(la[la > 0], return_counts=True)))
    area_b = dict(zip(*np.unique(lb[lb > 0], return_counts=True)))
    pairs, inter = np.unique(np.stack([la[both], lb[both]]), axis=1, return_counts=True)
    out = []
    for (ia, ib), n in zip(pairs.T, inter):
        union = area_a[ia] + area_b[ib] - n
        if n / union > iou_threshold:
            out.append((int(ia), int(ib)))
    return out


def _group_candidate(ps: list[_Piece]) -> tuple[tuple, int, int, np.ndarray, float]:
    """How one matched group is drawn: (priority, y0, x0, (h, w) bool mask, score).

    Its most central complete copy, else the union of its truncated copies (lower priority, mean score).
    """
    complete = [p for p in ps if not p.truncated]
    if complete:
        best = max(complete, key=lambda p: (p.centrality, p.area))
        return (1, best.centrality, best.area), best.y0, best.x0, best.mask, best.score
    y0, x0, mask = _union_masks(ps)
    finite = [p.score for p in ps if np.isfinite(p.score)]
    score = float(np.mean(finite)) if finite else float("nan")
    return (0, max(p.centrality for p in ps), int(mask.sum())), y0, x0, mask, score


def _paint_candidates(shape: tuple[int, int], candidates: list[tuple[tuple, int, int, np.ndarray, float]],
                      min_kept_fraction: float) -> tuple[np.ndarray, dict[int, float]]:
    """Paint the candidates in order onto free pixels of an (H, W) int32 image; drop those left too small."""
    out = np.zeros(shape, np.int32)
    scores: dict[int, float] = {}
    next_id = 1
    for _, y0, x0, mask, score in candidates:
        region = out[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        free = mask & (region == 0)
        total = int(mask.sum())
        if total == 0 or free.sum() < min_kept_fraction * total:
            continue
        region[free] = next_id
        scores[next_id] = score
        next_id += 1
    return out, scores
