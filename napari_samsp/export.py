"""Exporting label images: TIFF, PNG and COCO JSON (pure numpy/scipy/skimage; no Qt, no napari).

* TIFF keeps everything: 2D or 3D, uint16 (or uint32 when ids need it), zlib-compressed.
* PNG is 2D only; a 3D stack becomes one ``<stem>_z0000.png`` per slice. 16-bit gray.
* COCO JSON (object detection / instance segmentation format): one annotation per
  label id (per slice for stacks). Single-part objects without holes are written as
  polygons; objects with holes or several parts as uncompressed RLE, which round-trips
  exactly. ``category_id`` 1 ("object") for instance labels, or one category per id in
  ``semantic`` mode.

Every writer is atomic (temporary file + rename, see :func:`napari_samsp.io.write_atomic`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputImageError
from .io import write_atomic, write_png_atomic, write_tiff_atomic

__all__ = [
    "coco_to_labels",
    "export_labels",
    "labels_to_coco",
    "rle_decode",
    "rle_encode",
    "write_coco",
    "write_labels_png",
    "write_labels_tiff",
]

EXPORT_SUFFIXES = (".tif", ".tiff", ".png", ".json")


def _check_labels(labels: np.ndarray, allow_3d: bool = True) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.size == 0:
        raise InputImageError(f"labels have zero size (shape {lab.shape})")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.isfinite(lab).all() and (lab == np.round(lab)).all():
            lab = lab.astype(np.int64)
        else:
            raise InputImageError(f"labels must be integers, got {lab.dtype}")
    if lab.ndim not in ((2, 3) if allow_3d else (2,)):
        raise InputImageError(f"labels must be 2D{' or 3D' if allow_3d else ''}, got shape {lab.shape}")
    if lab.min() < 0:
        raise InputImageError("labels have negative values")
    return lab


def _compact_dtype(lab: np.ndarray) -> np.ndarray:
    top = int(lab.max(initial=0))
    if top <= np.iinfo(np.uint16).max:
        return lab.astype(np.uint16, copy=False)
    if top <= np.iinfo(np.uint32).max:
        return lab.astype(np.uint32, copy=False)
    raise InputImageError(f"label id {top} does not fit 32 bits")


# --------------------------------------------------------------------------- raster formats


def write_labels_tiff(path: str | Path, labels: np.ndarray) -> list[Path]:
    """Write 2D or 3D labels as one lossless TIFF (uint16, or uint32 when needed)."""
    lab = _compact_dtype(_check_labels(labels))
    return [write_tiff_atomic(path, lab)]


def write_labels_png(path: str | Path, labels: np.ndarray) -> list[Path]:
    """Write labels as 16-bit PNG: one file for 2D, one ``<stem>_zNNNN.png`` per slice for 3D.

    Raises:
        InputImageError: ids above 65535 (PNG holds 16 bits; use TIFF).
    """
    lab = _check_labels(labels)
    if int(lab.max(initial=0)) > np.iinfo(np.uint16).max:
        raise InputImageError(f"label id {int(lab.max())} does not fit a 16-bit PNG; export as TIFF")
    lab = lab.astype(np.uint16)
    path = Path(path)
    if lab.ndim == 2:
        return [write_png_atomic(path, lab)]
    return [write_png_atomic(path.with_name(f"{path.stem}_z{z:04d}{path.suffix}"), lab[z]) for z in range(lab.shape[0])]


# --------------------------------------------------------------------------- COCO


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a 2D binary mask: ``{"size": [h, w], "counts": [...]}``.

    Runs alternate background/foreground starting with background, in column-major
    (Fortran) order, as pycocotools expects.
    """
    m = np.asarray(mask, bool)
    flat = m.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode` (uncompressed RLE only)."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        raise InputImageError("compressed (string) RLE is not supported; use uncompressed counts")
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for c in counts:
        c = int(c)
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    if pos != h * w:
        raise InputImageError(f"RLE counts sum to {pos}, expected {h * w}")
    return flat.reshape((h, w), order="F")


def _polygon(mask: np.ndarray) -> list[float] | None:
    """The outer contour of a single-part, hole-free mask as a flat [x0, y0, x1, y1, ...] list."""
    from skimage import measure

    contours = measure.find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    if len(contours) != 1:
        return None
    c = measure.approximate_polygon(contours[0], tolerance=0.5) - 1.0  # undo the padding
    if len(c) < 4:  # a closed contour repeats its first point: need >= 3 distinct vertices
        return None
    return [round(float(v), 2) for rc in c[:-1] for v in (rc[1], rc[0])]


def _simple(mask: np.ndarray) -> bool:
    """One 8-connected part and no holes (4-connected background inside)."""
    _, parts = ndimage.label(mask, structure=np.ones((3, 3)))
    if parts != 1:
        return False
    return bool((ndimage.binary_fill_holes(mask) == mask).all())


def labels_to_coco(
    labels: np.ndarray,
    image_name: str = "image",
    *,
    semantic: bool = False,
    category_names: dict[int, str] | None = None,
    segmentation: str = "auto",
    image_id_start: int = 1,
    file_suffix: str = ".png",
) -> dict[str, Any]:
    """A COCO instance-segmentation dict for 2D labels or a 3D stack (one COCO image per slice).

    Args:
        labels: (H, W) or (Z, H, W) integer labels, 0 background.
        image_name: file stem for the COCO ``images`` entries (``<name>_z0003`` for slices).
        semantic: ids are classes (one category per id) instead of instances of one category.
        category_names: names for category ids (default ``object`` / ``class_<id>``).
        segmentation: ``"auto"`` (polygon for simple objects, RLE otherwise), ``"polygon"``
            (RLE only where a polygon cannot represent the object) or ``"rle"``.
        image_id_start: the first COCO image id.
        file_suffix: suffix of the ``file_name`` of each image entry.
    """
    if segmentation not in ("auto", "polygon", "rle"):
        raise ValueError(f"segmentation must be auto, polygon or rle, got {segmentation!r}")
    lab = _check_labels(labels)
    planes = [lab] if lab.ndim == 2 else [lab[z] for z in range(lab.shape[0])]
    names = category_names or {}
    ids = sorted(int(i) for i in np.unique(lab) if i)
    if semantic:
        categories = [{"id": i, "name": names.get(i, f"class_{i}"), "supercategory": "samsp"} for i in ids]
    else:
        categories = [{"id": 1, "name": names.get(1, "object"), "supercategory": "samsp"}]
    images, annotations = [], []
    ann_id = 1
    for k, plane in enumerate(planes):
        image_id = image_id_start + k
        stem = image_name if lab.ndim == 2 else f"{image_name}_z{k:04d}"
        images.append({"id": image_id, "file_name": f"{stem}{file_suffix}", "height": int(plane.shape[0]), "width": int(plane.shape[1])})
        slices = ndimage.find_objects(plane.astype(np.int64, copy=False))
        for idx, sl in enumerate(slices):
            if sl is None:
                continue
            oid = idx + 1
            mask = plane == oid
            ys, xs = np.nonzero(mask[sl])
            y0, x0 = sl[0].start, sl[1].start
            bbox = [int(x0 + xs.min()), int(y0 + ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            seg: Any = None
            if segmentation != "rle" and (segmentation == "polygon" or _simple(mask[sl])):
                poly = _polygon(mask[sl]) if _simple(mask[sl]) else None
                if poly is not None:
                    seg = [[v + (x0 if i % 2 == 0 else y0) for i, v in enumerate(poly)]]
            if seg is None:
                seg = rle_encode(mask)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": oid if semantic else 1,
                    "segmentation": seg,
                    "area": int(mask.sum()),
                    "bbox": bbox,
                    "iscrowd": 0,
                    "attributes": {"label_id": oid, **({"slice": k} if lab.ndim == 3 else {})},
                }
            )
            ann_id += 1
    return {
        "info": {
            "description": f"labels of {image_name} exported by napari-samsp",
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def coco_to_labels(coco: dict[str, Any], image_id: int | None = None) -> np.ndarray:
    """Rasterise the annotations of one COCO image back into (H, W) labels.

    Each annotation is painted with ``attributes.label_id`` when present, else its
    1-based order; later annotations win where they overlap.
    """
    from skimage.draw import polygon as draw_polygon

    images = {img["id"]: img for img in coco.get("images", [])}
    if not images:
        raise InputImageError("the COCO file holds no images")
    iid = next(iter(images)) if image_id is None else image_id
    if iid not in images:
        raise InputImageError(f"no image with id {iid} in the COCO file")
    h, w = int(images[iid]["height"]), int(images[iid]["width"])
    out = np.zeros((h, w), np.uint32)
    anns = [a for a in coco.get("annotations", []) if a.get("image_id") == iid]
    for n, ann in enumerate(anns, start=1):
        lid = int(ann.get("attributes", {}).get("label_id", n))
        seg = ann["segmentation"]
        if isinstance(seg, dict):
            mask = rle_decode(seg)
        else:
            mask = np.zeros((h, w), bool)
            for poly in seg:
                xy = np.asarray(poly, np.float64).reshape(-1, 2)
                rr, cc = draw_polygon(xy[:, 1], xy[:, 0], (h, w))
                mask[rr, cc] = True
        out[mask] = lid
    return _compact_dtype(out)


def write_coco(path: str | Path, labels: np.ndarray, image_name: str | None = None, **kwargs) -> list[Path]:
    """Write :func:`labels_to_coco` as JSON; ``image_name`` defaults to the file stem."""
    path = Path(path)
    coco = labels_to_coco(labels, image_name or path.stem, **kwargs)
    text = json.dumps(coco, separators=(",", ":")) + "\n"

    def _write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return [write_atomic(path, _write)]


def export_labels(path: str | Path, labels: np.ndarray, image_name: str | None = None, **kwargs) -> list[Path]:
    """Write labels in the format the suffix names (.tif/.tiff, .png or .json for COCO); returns the files written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return write_labels_tiff(path, labels)
    if suffix == ".png":
        return write_labels_png(path, labels)
    if suffix == ".json":
        return write_coco(path, labels, image_name, **kwargs)
    raise InputImageError(f"cannot export labels as {suffix or 'a file without suffix'}: use one of {', '.join(EXPORT_SUFFIXES)}")


def stack_names(paths: Sequence[Path]) -> str:
    """A short human-readable list of written files for status messages."""
    if len(paths) <= 2:
        return ", ".join(p.name for p in paths)
    return f"{paths[0].name} ... {paths[-1].name} ({len(paths)} files)"
