"""The one contrast stretch: any numeric image or stack -> the uint8 pixels the model sees.

Every path (the plugin's :class:`~napari_samsp.interactive.StackNormaliser`, ``samsp segment``
via :func:`~napari_samsp.autoseg.segment_stack`, :func:`~napari_samsp.transforms.to_rgb_uint8`
and the band-by-band big-image path) uses these functions, so one image gives one set of uint8
pixels and therefore one embedding-cache key whichever way it comes in.

The rule:

* uint8 passes through unchanged (no limits); bool becomes {0, 255} first.
* Other dtypes are stretched linearly between the 0.5th and 99.5th percentiles of the values the
  model sees (an alpha channel is left out), clipped to 0..255 and rounded.
* The percentiles come from every value when the image (or stack) has at most
  :data:`SAMPLE_PIXELS` pixel positions, else from a deterministic regular grid: every
  ``step``-th row and column of every plane, ``step = ceil(sqrt(positions / SAMPLE_PIXELS))``.
* Values are halved first (in float64 for 64-bit and 32-bit integer or 64-bit float data, float32
  otherwise), so ``hi - lo`` of any finite values stays finite. Halving is exact, so it does not
  change the uint8 result of ordinary data.
* A flat image (``hi <= lo`` even after falling back to min/max) gives all zeros.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InputImageError

__all__ = ["PERCENTILES", "SAMPLE_PIXELS", "sample_step", "limits_of_sample", "stretch_limits", "apply_stretch"]

PERCENTILES = (0.5, 99.5)
#: Pixel positions (Z * H * W) above which percentiles come from a regular grid subsample.
SAMPLE_PIXELS = 4 * 2**20

Limits = tuple[np.floating, np.floating]


def work_dtype(dtype: np.dtype) -> type:
    """float64 where float32 could overflow or lose integers badly, else float32."""
    dtype = np.dtype(dtype)
    wide = dtype.itemsize > 4 or dtype in (np.dtype(np.int32), np.dtype(np.uint32))
    return np.float64 if wide else np.float32


def sample_step(positions: int) -> int:
    """Grid step along rows and columns for an image or stack of ``positions`` pixel positions."""
    return max(1, math.ceil(math.sqrt(positions / SAMPLE_PIXELS)))


def limits_of_sample(sample: np.ndarray) -> Limits:
    """(lo, hi) of the halved values of ``sample`` (any shape, any numeric dtype, finite)."""
    arr = np.asarray(sample)
    if arr.size == 0:
        raise InputImageError("image has zero size")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputImageError("image contains NaN or infinite values")
    half = arr.astype(work_dtype(arr.dtype)) * 0.5
    lo, hi = np.percentile(half, PERCENTILES)
    if hi <= lo:
        lo, hi = half.min(), half.max()
    # Kept as scalars of the working dtype: the stretch factor is then computed as before.
    return lo, hi


def _check_dtype(dtype: np.dtype) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == bool):
        raise InputImageError(f"unsupported image dtype {dtype}; expected integers or floats")


def stretch_limits(data: Any, rgb: bool = False, stack: bool = False) -> Limits | None:
    """Stretch limits of a whole image or stack; None when it is uint8 or bool (no stretch).

    Args:
        data: (H, W[, C]) or, with ``stack``, (Z, H, W[, C]); numpy or array-like that slices.
        rgb: whether the last axis is colour; a 4th (alpha) channel is left out.
        stack: whether the first axis is Z.

    Raises:
        InputImageError: unsupported dtype, zero size, NaN or infinite values.
    """
    dtype = np.dtype(data.dtype)
    _check_dtype(dtype)
    if dtype in (np.dtype(np.uint8), np.dtype(bool)):
        return None
    shape = tuple(int(s) for s in data.shape)
    spatial = shape[:-1] if rgb else shape
    if any(s == 0 for s in shape):
        raise InputImageError(f"image has zero size (shape {shape})")
    if isinstance(data, np.ndarray) and np.issubdtype(dtype, np.floating) and not np.isfinite(data).all():
        raise InputImageError("image contains NaN or infinite values")  # anywhere, not just in the sample
    step = sample_step(math.prod(spatial))
    index: tuple = (slice(None),) * (1 if stack else 0) + (slice(None, None, step),) * 2
    if rgb:
        index += (slice(0, 3),)
    sample = np.asarray(data[index]) if (step > 1 or rgb) else np.asarray(data)
    return limits_of_sample(sample)


def apply_stretch(data: np.ndarray, limits: Limits | None) -> np.ndarray:
    """``data`` (any shape) -> uint8 of the same shape with ``limits`` from :func:`stretch_limits`.

    ``limits`` None means uint8 input (returned as is) or bool (-> {0, 255}).
    """
    arr = np.asarray(data)
    if limits is None:
        if arr.dtype == bool:
            return arr.astype(np.uint8) * 255
        return arr
    lo, hi = limits
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    half = arr.astype(work_dtype(arr.dtype)) * 0.5
    with np.errstate(over="ignore"):  # values far above hi become inf, then 255
        return np.clip((half - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)
