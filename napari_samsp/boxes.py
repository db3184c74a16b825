"""The one box convention: XYXY in pixel coordinates, max INCLUSIVE (SAM's prompt convention).

A box is ``(x0, y0, x1, y1)`` where ``x0, y0`` is the first and ``x1, y1`` the LAST pixel column
and row of the object (so a one-pixel object at (x, y) has the box ``(x, y, x, y)``). This is what
segment-anything's ``SamPredictor.predict(box=...)`` takes (its prompt encoder adds 0.5 to move
to pixel centres) and what its ``utils.amg.batched_mask_to_box`` returns; :func:`mask_to_box`
equals it (tested against upstream).

Two places need other forms, and convert here instead of re-deriving them:

* :func:`box_slices`: half-open ``(r0, r1, c0, c1)`` array slices of a (grown) box;
* :func:`box_edges`: the continuous extent ``(x0, y0, x1 + 1, y1 + 1)`` (pixel ``i`` spans
  ``[i, i + 1)``), the coordinates fine-tuning draws its prompts in (points at ``i + 0.5``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["mask_to_box", "grow_box", "box_slices", "box_edges", "edges_to_box"]


def mask_to_box(mask: Any, margin: float = 0.0) -> np.ndarray | None:
    """(4,) float32 inclusive XYXY box around a (H, W) mask, grown by ``margin`` px and clipped
    to ``[0, W - 1] x [0, H - 1]``; None when the mask is empty.

    ``mask`` may be a numpy array or a torch tensor (anything ``np.asarray`` takes).
    """
    m = np.asarray(mask, bool)
    rows = np.flatnonzero(m.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(m.any(axis=0))
    box = np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)
    return grow_box(box, m.shape, margin) if margin else box


def grow_box(box: Any, shape: tuple[int, int], margin: float) -> np.ndarray:
    """An inclusive box grown by ``margin`` px on every side, clipped to an (H, W) image -> (4,) float32."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = shape
    return np.array(
        [max(0.0, x0 - margin), max(0.0, y0 - margin), min(w - 1.0, x1 + margin), min(h - 1.0, y1 + margin)],
        np.float32,
    )


def box_slices(box: Any, shape: tuple[int, int], margin: float = 0.0) -> tuple[int, int, int, int]:
    """Half-open ``(r0, r1, c0, c1)`` rows/cols covering an inclusive (fractional) box grown by
    ``margin``, clipped to ``shape``: ``array[r0:r1, c0:c1]`` holds every pixel the box touches."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = shape
    r0, c0 = max(0, int(np.floor(y0 - margin))), max(0, int(np.floor(x0 - margin)))
    r1, c1 = min(h, int(np.ceil(y1 + margin)) + 1), min(w, int(np.ceil(x1 + margin)) + 1)
    return r0, r1, c0, c1


def box_edges(box: Any) -> np.ndarray:
    """Inclusive box -> its continuous extent ``(x0, y0, x1 + 1, y1 + 1)`` as (4,) float32."""
    b = np.asarray(box, np.float32).copy()
    b[2:] += 1
    return b


def edges_to_box(edges: Any) -> np.ndarray:
    """Continuous extent -> inclusive box ``(x0, y0, x1 - 1, y1 - 1)`` (inverse of :func:`box_edges`)."""
    b = np.asarray(edges, np.float32).copy()
    b[2:] -= 1
    return b
