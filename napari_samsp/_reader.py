"""npe2 reader: a folder in the data layout (``DIR/images`` + ``DIR/masks``) or a plain folder of images.

Images of one size become a stack (masks, where present, a matching labels stack);
images of different sizes become one layer each (at most ``MAX_LAYERS``). Anything
else is left to other readers (returns None).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import SamspError
from .io import find_images, image_size, read_image, read_mask

MAX_LAYERS = 50


def _folder_images(folder: Path) -> tuple[list[Path], Path | None]:
    if (folder / "images").is_dir():
        masks = folder / "masks"
        return find_images([folder / "images"]), masks if masks.is_dir() else None
    return find_images([folder]), None


def get_reader(path):
    """Return a reader for a folder holding images, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(os.fspath(path))
    if not p.is_dir():
        return None
    try:
        images, _ = _folder_images(p)
    except SamspError:
        return None
    return read_folder if images else None


def read_folder(path) -> list[tuple]:
    """Read a folder: see the module docstring."""
    if isinstance(path, list):
        path = path[0]
    folder = Path(os.fspath(path))
    images, mask_dir = _folder_images(folder)
    same = len({image_size(p) for p in images}) == 1
    if not same:
        images = images[:MAX_LAYERS]
    arrays = [read_image(p) for p in images]
    masks = []
    for p in images:
        mp = None if mask_dir is None else mask_dir / f"{p.stem}.png"
        masks.append(read_mask(mp) if mp is not None and mp.is_file() else None)
    same = same and len({a.shape for a in arrays}) == 1
    if same and len(arrays) > 1:
        stack = np.stack(arrays)
        rgb = stack.ndim == 4 and stack.shape[-1] in (3, 4)
        layers = [(stack, {"name": folder.name, "rgb": rgb, "metadata": {"paths": [str(p) for p in images]}}, "image")]
        if any(m is not None for m in masks):
            hw = stack.shape[1:3]
            lab = np.stack([m if m is not None and m.shape == hw else np.zeros(hw, np.uint16) for m in masks])
            layers.append((lab, {"name": f"{folder.name} masks", "opacity": 0.5}, "labels"))
        return layers
    layers = []
    for p, a, m in zip(images, arrays, masks):
        rgb = a.ndim == 3 and a.shape[-1] in (3, 4)
        layers.append((a, {"name": p.stem, "rgb": rgb, "metadata": {"path": str(p)}}, "image"))
        if m is not None and m.shape == a.shape[:2]:
            layers.append((m, {"name": f"{p.stem} mask", "opacity": 0.5}, "labels"))
    return layers
