"""npe2 writers for Labels layers: TIFF, 16-bit PNG and COCO JSON (see :mod:`napari_samsp.export`)."""

from __future__ import annotations

from typing import Any

from .export import write_coco, write_labels_png, write_labels_tiff


def write_labels_tif(path: str, data: Any, meta: dict) -> list[str]:
    """Labels as one lossless TIFF (2D or 3D)."""
    return [str(p) for p in write_labels_tiff(path, data)]


def write_labels_png16(path: str, data: Any, meta: dict) -> list[str]:
    """Labels as 16-bit PNG (one file per slice for stacks)."""
    return [str(p) for p in write_labels_png(path, data)]


def write_labels_coco(path: str, data: Any, meta: dict) -> list[str]:
    """Labels as COCO instance-segmentation JSON."""
    name = (meta or {}).get("name") or None
    return [str(p) for p in write_coco(path, data, image_name=name)]
