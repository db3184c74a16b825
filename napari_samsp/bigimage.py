"""Huge 2D images: segmented tile by tile into a label TIFF on disk, with bounded memory (issue 13).

:func:`napari_samsp.autoseg.segment_tiled` keeps whole-image float arrays (probabilities of every
pass, blending weights) and every tile's labels in memory: over 10 GB for a 20000 x 20000 image.
Here the image is read one row of tiles at a time (a *band* of ``tile`` rows, from a TIFF
through tifffile's zarr view, so the file is never loaded whole) and each finished band of labels
goes straight into a memory-mapped TIFF, mapped only while that band is written. Memory is a few
bands of the image width, whatever the height (see docs/RELIABILITY.md for measurements).

Stitching, by mode:

* semantic: tile probabilities are blended with :func:`~napari_samsp.tiling.blend_weights`
  as in ``segment_tiled``; rows are thresholded once no later tile reaches them. Small components
  (``min_size``) are removed within each finished band, so a speck cut by a band edge may be
  judged on its part in that band (weaker than the in-memory path).
* instance: each tile *owns* the middle of its overlaps with its neighbours; an object is kept by
  the tile that owns its centroid and painted onto free pixels only. Objects up to half the
  overlap (``tile / 8`` px) are always seen whole; larger ones may be cut at a tile's inner edge
  (``segment_tiled``'s merge joins them; this path does not). Labels are uint32.

Contrast: every tile is stretched with the whole image's limits from :mod:`napari_samsp.contrast`
(the one stretch every path uses; the same regular subsample above about 4 M pixels), read band by band.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .contrast import Limits, apply_stretch, limits_of_sample, sample_step
from .errors import InputImageError
from .io import TIFF_SUFFIXES, write_atomic
from .tiling import blend_weights, plan_tiles
from .transforms import to_rgb_uint8

__all__ = ["HUGE_PIXELS", "check_lazy", "is_huge", "open_lazy", "segment_to_tiff"]

HUGE_PIXELS = 48 * 2**20  # above ~50 M pixels (e.g. 7000 x 7000) images are streamed tile by tile
def header_shape(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of an image from its header alone; None when the format is not probed here."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(int(s) for s in series.shape), np.dtype(series.dtype)
        except Exception as exc:  # the regular reader gives the user-facing message
            raise InputImageError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    return None


def is_huge(shape: tuple[int, ...]) -> bool:
    """Whether a single 2D image (H, W) or (H, W, 3|4) is large enough for the streaming path.

    The threshold is :data:`HUGE_PIXELS`, or the environment variable ``SAMSP_TILE_TO_DISK_PIXELS``.
    """
    plane = len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4))
    limit = int(os.environ.get("SAMSP_TILE_TO_DISK_PIXELS") or HUGE_PIXELS)
    return plane and shape[0] * shape[1] > limit


class _ContiguousTiff:
    """An uncompressed TIFF stored in one contiguous block, read row band by row band.

    tifffile's zarr view of such a file has one chunk of the whole image, so every slice would
    read all of it; here each read maps just the rows it needs and unmaps them at once.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self._row_bytes = int(np.prod(shape[1:])) * dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if isinstance(key[0], slice) else slice(key[0], key[0] + 1)
        y0, y1, step = rows.indices(self.shape[0])
        if y1 <= y0:
            return np.zeros((0, *self.shape[1:]), self.dtype)[key[1:]]
        view = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset + y0 * self._row_bytes,
                         shape=(y1 - y0, *self.shape[1:]))
        try:
            out = np.array(view[(slice(0, y1 - y0, step), *key[1:])])
            return out.astype(out.dtype.newbyteorder("="), copy=False)
        finally:
            del view


def open_lazy(path: Path) -> Any:
    """A TIFF as an array-like read on demand; slices give numpy arrays.

    Uncompressed contiguous files are read through short-lived memory maps of the rows asked for;
    others through tifffile's zarr view (chunk by chunk: strips or tiles).
    """
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        offset = series.dataoffset
        if offset is not None and series.ndim in (2, 3):
            dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)  # the file's byte order
            return _ContiguousTiff(path, int(offset), tuple(int(s) for s in series.shape), dtype)
    store = tifffile.imread(path, aszarr=True)
    arr = zarr.open(store, mode="r")
    if not hasattr(arr, "shape"):  # a pyramid: its first level
        arr = arr[next(iter(arr.array_keys()))]
    return arr


def _bands(h: int, rows: int = 1024):
    for y in range(0, h, rows):
        yield y, min(h, y + rows)


def check_lazy(path: Path, source: Any) -> None:
    """What segmenting would refuse, checked band by band (NaN/inf in float images), before any writing."""
    dtype = np.dtype(source.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == bool):
        raise InputImageError(f"{path}: unsupported image dtype {dtype}; expected integers or floats")
    if np.issubdtype(dtype, np.floating):
        for y0, y1 in _bands(int(source.shape[0])):
            if not np.isfinite(np.asarray(source[y0:y1])).all():
                raise InputImageError(f"{path}: image contains NaN or infinite values (rows {y0}-{y1})")


def _stretch(source: Any) -> Limits | None:
    """:func:`napari_samsp.contrast.stretch_limits` of a lazy source, read band by band; None for uint8/bool."""
    dtype = np.dtype(source.dtype)
    if dtype in (np.dtype(np.uint8), np.dtype(bool)):
        return None
    h, w = int(source.shape[0]), int(source.shape[1])
    step = sample_step(h * w)
    parts = [np.asarray(source[y0:y1:step, ::step]) for y0, y1 in _bands(h, 1024 * step)]
    sample = np.concatenate(parts)
    if sample.ndim == 3:
        sample = sample[..., :3]  # alpha left out, as for in-memory images
    return limits_of_sample(sample)


def _to_rgb(tile: np.ndarray, stretch: Limits | None) -> np.ndarray:
    """One tile -> (h, w, 3) uint8 with the whole image's contrast."""
    if stretch is None:
        return to_rgb_uint8(tile)
    return to_rgb_uint8(apply_stretch(tile, stretch))


def _owned(starts: list[int], tile: int, length: int, i: int) -> tuple[int, int]:
    """The part of tile ``i`` along one axis that it owns: from the middle of one overlap to the next."""
    a = 0 if i == 0 else (starts[i - 1] + tile + starts[i]) // 2
    b = length if i == len(starts) - 1 else (starts[i] + tile + starts[i + 1]) // 2
    return a, b


def segment_to_tiff(
    predictor: Any,
    source: Any,
    out_path: str | Path,
    mode: str = "semantic",
    progress: Callable[[int, int], None] | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    segment_fn: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> int:
    """Segment a huge 2D image tile by tile into ``out_path`` (a TIFF, written atomically); returns the object count.

    Args:
        predictor: a :class:`~napari_samsp.predictor.Predictor`.
        source: (H, W) or (H, W, 3|4) array-like (numpy, memmap or :func:`open_lazy`); read one band at a time.
        out_path: the label TIFF: uint16 {0, 1} (semantic) or uint32 instance labels (instance).
        progress: called with (tiles done, tiles total) after every tile.
        tile_size, overlap: default ``2 * img_size`` and a quarter of the tile (as ``segment_tiled``).
        segment_fn: segments one tile, ``(predictor, rgb, mode=..., **kwargs)`` -> an ``AutoSegResult``;
            default :func:`napari_samsp.autoseg.segment` (tests pass a known answer to check the stitching).
        **kwargs: passed to :func:`napari_samsp.autoseg.segment` (num_passes, threshold, min_size, ...).
    """
    from .autoseg import segment

    segment_fn = segment_fn or segment
    if mode not in ("semantic", "instance"):
        raise ValueError(f"mode must be 'semantic' or 'instance', got {mode!r}")
    h, w = int(source.shape[0]), int(source.shape[1])
    tile, ov, n_tiles, ys, xs = _tile_grid(predictor, (h, w), tile_size, overlap)
    fg_rule = (float(kwargs.get("threshold", 0.5)), int(kwargs.get("min_size", 8)))
    stretch = _stretch(source)
    out_dtype = np.dtype(np.uint16 if mode == "semantic" else np.uint32)
    band_h = min(tile, h)
    count = [0]

    def write(tmp: Path) -> None:
        put = _row_writer(tmp, (h, w), out_dtype)
        bufs = _band_buffers(mode, (band_h, w))
        b0 = 0  # first image row held in the band buffers
        done = 0
        for r, y0 in enumerate(ys):
            y1 = min(h, y0 + tile)
            band = np.asarray(source[y0:y1])  # one row of tiles, read once
            oy0, oy1 = _owned(ys, tile, h, r)
            for c, x0 in enumerate(xs):
                x1 = min(w, x0 + tile)
                res = segment_fn(predictor, _to_rgb(band[:, x0:x1], stretch), mode=mode, **kwargs)
                if mode == "semantic":
                    _blend_into(bufs, (slice(y0 - b0, y1 - b0), slice(x0, x1)), res.probability, ov)
                else:
                    ox0, ox1 = _owned(xs, tile, w, c)
                    _paint(bufs[0], b0, y0, x0, res.labels, (oy0, oy1, ox0, ox1), count)
                done += 1
                if progress is not None:
                    progress(done, n_tiles)
            final_to = h if r == len(ys) - 1 else ys[r + 1]  # no later tile reaches rows above this
            _flush_band(bufs, mode, put, b0, final_to - b0, out_dtype, count, fg_rule)
            b0 = final_to

    write_atomic(Path(out_path), write)
    return count[0]


def _tile_grid(predictor: Any, shape: tuple[int, int], tile_size: int | None,
               overlap: int | None) -> tuple[int, int, int, list[int], list[int]]:
    """(tile, overlap, number of tiles, tile row starts, tile column starts) for an (H, W) image,
    defaults as :func:`segment_to_tiff` documents."""
    from .autoseg import default_tiling

    h, w = shape
    _, default_tile, _ = default_tiling(predictor.model.img_size if tile_size is None else 1)
    tile = min(int(tile_size or default_tile), max(h, w))
    ov = int(tile // 4 if overlap is None else overlap)
    tiles = plan_tiles((h, w), tile, ov)
    return tile, ov, len(tiles), sorted({t[0] for t in tiles}), sorted({t[2] for t in tiles})


def _blend_into(bufs: tuple[np.ndarray, ...], where: tuple[slice, slice], probability: np.ndarray, ov: int) -> None:
    """Add one tile's (h, w) probability, weighted by :func:`blend_weights` of the tile's size, to the
    (weighted sum, weight sum) band buffers at ``where`` (the tile's rows and columns in the band)."""
    wts = blend_weights((where[0].stop - where[0].start, where[1].stop - where[1].start), ov)
    bufs[0][where] += wts * probability
    bufs[1][where] += wts


def _row_writer(tmp: Path, shape: tuple[int, int], out_dtype: np.dtype) -> Callable[[int, np.ndarray], None]:
    """Create an (H, W) ``out_dtype`` TIFF at ``tmp``; return ``put(y0, rows)`` writing (n, W) rows from row y0."""
    import tifffile

    h, w = shape
    mm = tifffile.memmap(tmp, shape=(h, w), dtype=out_dtype, photometric="minisblack")
    offset = int(mm.offset)
    del mm

    def put(y0: int, rows: np.ndarray) -> None:  # map just these rows, write, unmap
        if rows.shape[0] == 0:
            return
        view = np.memmap(tmp, dtype=out_dtype, mode="r+", offset=offset + y0 * w * out_dtype.itemsize,
                         shape=rows.shape)
        view[:] = rows
        view.flush()
        del view

    return put


def _band_buffers(mode: str, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The band buffers, (band_h, W) each: (weighted probability sum, weight sum) float32 for semantic,
    (instance labels,) uint32 for instance."""
    if mode == "semantic":
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    return (np.zeros(shape, np.uint32),)


def _flush_band(bufs: tuple[np.ndarray, ...], mode: str, put: Callable[[int, np.ndarray], None], b0: int, n: int,
                out_dtype: np.dtype, count: list[int], fg_rule: tuple[float, int]) -> None:
    """Write the first ``n`` final rows of the (band_h, W) band buffers at image row ``b0``, then shift the
    rest (the overlap with the next row of tiles) to the top and clear the others; ``fg_rule`` is
    (threshold, min_size) of the semantic foreground."""
    from .autoseg import _remove_small

    if mode == "semantic":
        num, den = bufs
        threshold, min_size = fg_rule
        with np.errstate(invalid="ignore", divide="ignore"):
            fg = _remove_small(num[:n] / den[:n] > threshold, min_size)
        put(b0, fg.astype(out_dtype))
        count[0] = max(count[0], int(fg.any()))
    else:
        put(b0, bufs[0][:n])
    band_h = bufs[0].shape[0]
    for buf in bufs:  # keep the overlap with the next row of tiles, clear the rest
        buf[: band_h - n] = buf[n:].copy()
        buf[band_h - n :] = 0


def _paint(lab: np.ndarray, b0: int, y0: int, x0: int, labels: np.ndarray, owned: tuple[int, int, int, int],
           count: list[int]) -> None:
    """Paint the objects of one tile whose centroid this tile owns onto free pixels of the band."""
    from scipy import ndimage

    oy0, oy1, ox0, ox1 = owned
    for idx, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        mask = labels[sl] == idx + 1
        cy, cx = ndimage.center_of_mass(mask)
        gy, gx = y0 + sl[0].start + cy, x0 + sl[1].start + cx
        if not (oy0 <= gy < oy1 and ox0 <= gx < ox1):
            continue
        region = lab[y0 - b0 + sl[0].start : y0 - b0 + sl[0].stop, x0 + sl[1].start : x0 + sl[1].stop]
        free = mask & (region == 0)
        if free.any():
            count[0] += 1
            region[free] = count[0]
