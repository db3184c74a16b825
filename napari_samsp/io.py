"""Reading and writing images, masks and the training data layout (pure: no torch, no Qt).

The data layout is a fixed contract (see docs/ARCHITECTURE.md)::

    DIR/images/<stem>.<png|jpg|tif>   the images
    DIR/masks/<stem>.png              same stem, same height and width; binary 0/255 or uint16 instance labels
    DIR/splits.json                   optional {"train": [stems], "val": [stems]}

Every error a user can cause is raised as a :class:`~napari_samsp.errors.SamspError`
subclass with a one-line message that names the file.

Writes go through :func:`write_atomic`: a temporary file in the destination folder,
flushed and fsynced, then renamed over the destination and the folder fsynced, so a
reader (or a crash) only ever sees the old file or the complete new one. Temporary
files are hidden (``.<name>.<token>.tmp<suffix>``) and every folder listing here
skips hidden files.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DataLayoutError, InputImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIX",
    "Pair",
    "check_pair",
    "find_images",
    "fsync_dir",
    "hash_split",
    "image_size",
    "list_pairs",
    "normalise_labels",
    "pixel_hash",
    "read_image",
    "colour_labels",
    "read_mask",
    "read_pair",
    "read_splits",
    "split_pairs",
    "stem_fraction",
    "write_atomic",
    "write_json_atomic",
    "write_png_atomic",
    "write_tiff_atomic",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIX = ".png"
SPLITS_FILE = "splits.json"


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line user errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_SIGNATURES = {  # first bytes of the formats read here, by suffix
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".tif": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    ".tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}
_PIXEL_LIMIT_ENV = "SAMSP_MAX_IMAGE_PIXELS"


def _check_signature(path: Path) -> None:
    """Refuse a file whose first bytes are not those of its suffix's format, in words a user understands."""
    expected = _SIGNATURES.get(path.suffix.lower())
    if expected is None:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise InputImageError(f"cannot read image {path}: {_one_line(exc)}") from exc
    if not head:
        raise InputImageError(f"cannot read image {path}: the file is empty (0 bytes)")
    if not head.startswith(expected):
        kind = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(), "PNG")
        text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        raise InputImageError(
            f"cannot read image {path}: it is not a {kind} file"
            + (" (it looks like text)" if text else " (damaged, or another format with the wrong suffix)")
            + "; remove it from the inputs or save it again as an image"
        )


class _pixel_limit:
    """Raise Pillow's decompression-bomb limit while reading, when SAMSP_MAX_IMAGE_PIXELS says so."""

    def __enter__(self) -> None:
        self.old = None
        value = os.environ.get(_PIXEL_LIMIT_ENV)
        if value:
            from PIL import Image

            self.old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = int(value)

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = self.old


def _is_visible_file(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_file()


# --------------------------------------------------------------------------- reading


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file with its dtype kept (uint16 stays uint16, float stays float).

    TIFF goes through tifffile (stacks come back as stacks); PNG, JPEG and anything
    else imageio reads go through imageio (palette images come back as RGB).

    Raises:
        InputImageError: the file is missing, unreadable, corrupt or holds no pixels.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"image not found: {path}")
    if not path.is_file():
        raise InputImageError(f"not an image file: {path}")
    _check_signature(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            array = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            with open(path, "rb") as f, _pixel_limit():  # our handle, closed even when the decoder fails
                array = iio.imread(f, extension=path.suffix.lower() or None)
    except Exception as exc:  # every reader raises its own types: report them all the same way
        if "decompression bomb" in str(exc).lower():
            raise InputImageError(
                f"{path} is larger than Pillow's decompression-bomb limit ({_one_line(exc)}); if you trust "
                f"the file, convert it to TIFF (read without that limit, and tiled by samsp) or set "
                f"{_PIXEL_LIMIT_ENV}=<pixels> to raise the limit for PNG/JPEG"
            ) from exc
        raise InputImageError(f"cannot read image {path}: {_one_line(exc)}") from exc
    array = np.asarray(array)
    if array.size == 0 or array.ndim < 2:
        raise InputImageError(f"cannot read image {path}: no pixel data (shape {array.shape})")
    return array


def normalise_labels(array: np.ndarray, what: str = "mask") -> tuple[np.ndarray, bool]:
    """A 2D mask or label array -> (labels, is_binary).

    * bool, {0, 1}, {0, 255} and {0, dtype max} masks are binary and become {0, 1};
    * other non-negative integer labels are kept as labels;
    * labels are returned as uint16, or the smallest wider unsigned type when they need it;
    * float arrays are accepted when every value is a finite non-negative integer.

    Raises:
        InputImageError: not 2D, non-finite, negative or fractional values. ``what`` names the array.
    """
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise InputImageError(f"{what} must be a 2D label image, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint16), True
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputImageError(f"{what} contains NaN or infinite values")
        if (arr != np.round(arr)).any():
            raise InputImageError(f"{what} has fractional values; expected integer labels")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputImageError(f"{what} has unsupported dtype {arr.dtype}; expected integer labels")
    if arr.size == 0:
        raise InputImageError(f"{what} has zero size (shape {arr.shape})")
    if arr.min() < 0:
        raise InputImageError(f"{what} has negative values; expected labels >= 0")
    top = arr.max()
    full = np.iinfo(arr.dtype).max if np.issubdtype(arr.dtype, np.integer) else 255
    if top <= 1 or ((top == 255 or top == full) and bool(((arr == 0) | (arr == top)).all())):
        return (arr > 0).astype(np.uint16), True
    top = int(top)
    if top <= np.iinfo(np.uint16).max:
        return arr.astype(np.uint16), False
    out_dtype = np.uint32 if top <= np.iinfo(np.uint32).max else np.uint64
    return arr.astype(out_dtype), False


def colour_labels(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) colour-coded mask -> (H, W) int64 labels: one label per distinct colour, black = 0.

    Labels are 1..n in the sorted order of the colours (as ``np.unique`` sorts RGB rows).
    """
    colours, inv = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    black = ~colours.any(axis=1)
    ids = np.cumsum(~black).astype(np.int64)  # 1..n over the non-black colours
    ids[black] = 0
    return ids[inv.reshape(rgb.shape[:2])]


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a 2D label image (0 = background); the one reader of masks.

    The training data, the annotation store, the napari reader and ``samsp evaluate`` all read
    masks here, so they agree on every file:

    * binary masks (0/255, 0/1, bool) become {0, 1}; instance labels keep their values;
    * palette PNGs give their indices; gray+alpha keeps the gray channel;
    * RGB(A) masks whose R, G, B agree are gray; other colour masks are colour-coded labels:
      one label per distinct colour, black = background (:func:`colour_labels`).

    The result is uint16 unless the labels need a wider type.

    Raises:
        InputImageError: missing/corrupt file, not 2D, or values that are not labels.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"mask not found: {path}")
    if not path.is_file():
        raise InputImageError(f"not a mask file: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = read_image(path)
    else:
        try:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                array = np.asarray(im)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad mask file: one line
            raise InputImageError(f"cannot read mask {path}: {_one_line(exc)}") from exc
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        colour = array[..., :3]
        array = colour[..., 0] if (colour == colour[..., :1]).all() else colour_labels(colour)
    if array.ndim != 2 or array.size == 0:
        raise InputImageError(f"mask {path} must be a 2D image, got shape {array.shape}")
    labels, _ = normalise_labels(array, what=f"mask {path}")
    return labels


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image or mask file from its header only (no pixel decoding).

    Raises:
        InputImageError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"image not found: {path}")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                axes, shape = series.axes, series.shape
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
            return int(height), int(width)
    except Exception as exc:  # noqa: BLE001 - tifffile/PIL header errors have many types: one line for all
        raise InputImageError(f"cannot read image {path}: {_one_line(exc)}") from exc


def pixel_hash(array: np.ndarray) -> str:
    """sha256 (64 hex characters) over dtype, shape and pixel bytes.

    The byte order is normalised to little-endian first, so the same values hash the
    same whether a file was big- or little-endian. Used for embedding-cache keys and
    for recognising an image re-sent to the annotation store.
    """
    arr = np.asarray(array)
    dtype = arr.dtype if arr.dtype.byteorder == "|" else arr.dtype.newbyteorder("<")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    h = hashlib.sha256()
    h.update(dtype.str.encode())
    h.update(repr(tuple(int(s) for s in arr.shape)).encode())
    h.update(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- atomic writes


def fsync_dir(directory: str | Path) -> None:
    """fsync a folder so a rename or a new file in it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``writer(tmp)`` writes a hidden temporary file in the same folder.

    The temporary file keeps the destination's suffix (``.x.png`` -> ``.x.png.<token>.tmp.png``),
    so writers that pick the format from the suffix work. It is fsynced, renamed over
    ``path`` with :func:`os.replace`, and the folder is fsynced. On any exception
    (including KeyboardInterrupt) the temporary file is removed, the old ``path`` is left
    as it was, and the exception propagates. The parent folder is created if needed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"
    try:
        writer(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    fsync_dir(parent)
    return path


def write_png_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Write a lossless PNG atomically.

    Accepts 2D uint8 or uint16 (16-bit gray PNG), and (H, W, 3|4) uint8 (RGB/RGBA).

    Raises:
        InputImageError: any other dtype or shape.
    """
    arr = np.ascontiguousarray(array)
    ok = (arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)) or (
        arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8
    )
    if not ok or arr.size == 0:
        raise InputImageError(
            f"cannot write {Path(path).name} as PNG: expected 2D uint8/uint16 or (H, W, 3|4) uint8, "
            f"got {arr.dtype} {arr.shape}"
        )
    if arr.dtype == np.uint16 and arr.dtype.byteorder == ">":
        arr = arr.astype("<u2")

    def _write(tmp: Path) -> None:
        from PIL import Image

        Image.fromarray(arr).save(tmp, format="PNG")

    return write_atomic(path, _write)


def write_tiff_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Write a lossless (zlib) TIFF atomically; any dtype tifffile supports is kept.

    (H, W, 3|4) arrays are stored as RGB(A); everything else as gray planes.
    """
    arr = np.ascontiguousarray(array)
    if arr.size == 0:
        raise InputImageError(f"cannot write {Path(path).name}: the image has zero size ({arr.shape})")
    rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)

    def _write(tmp: Path) -> None:
        import tifffile

        kwargs: dict[str, Any] = {"photometric": "rgb" if rgb else "minisblack", "compression": "zlib"}
        if rgb and arr.shape[-1] == 4:
            kwargs["extrasamples"] = ("unassalpha",)
        tifffile.imwrite(tmp, arr, **kwargs)

    return write_atomic(path, _write)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically."""
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"

    def _write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return write_atomic(path, _write)


# --------------------------------------------------------------------------- inputs and the data layout


def _images_in(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and _is_visible_file(p)
    )


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders, in the order given; folders are listed (not recursively) and sorted.

    Hidden files are skipped; a file listed twice is returned once.

    Raises:
        InputImageError: a path that does not exist, or a file that is not a supported image.
        DataLayoutError: a folder with no images in it.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = _images_in(path)
            if not images:
                raise DataLayoutError(f"no images in {path} (looked for .png, .jpg, .tif)")
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputImageError(
                    f"{path} is not a supported image (expected {', '.join(IMAGE_SUFFIXES)})"
                )
            images = [path]
        else:
            raise InputImageError(f"no such file or folder: {path}")
        for image in images:
            key = image.resolve()
            if key not in seen:
                seen.add(key)
                found.append(image)
    return found


@dataclass(frozen=True)
class Pair:
    """One training example of the data layout: ``images/<stem>.*`` with ``masks/<stem>.png``."""

    stem: str
    image_path: Path
    mask_path: Path
    store_root: Path | None = None  # set for an annotation store's entries: read under its lock


def list_pairs(directory: str | Path, *, check_sizes: bool = False) -> list[Pair]:
    """The (image, mask) pairs of a folder in the data layout, sorted by stem.

    Images without a mask are skipped with a warning; masks without an image are
    ignored. With ``check_sizes`` the image and mask headers are read (no pixel
    decoding) and a size mismatch raises.

    Raises:
        DataLayoutError: no folder, no ``images/`` or ``masks/``, no images, no image with
            a mask, two images with one stem, or (``check_sizes``) a mask of another size.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataLayoutError(f"data folder not found: {root}")
    if (root / "manifest.jsonl").is_file():  # an annotation store: its committed entries only
        from .store import committed_pairs

        pairs = committed_pairs(root)
        if check_sizes:
            for pair in pairs:
                _check_sizes(image_size(pair.image_path), image_size(pair.mask_path), pair.stem)
        return pairs
    images_dir, masks_dir = root / "images", root / "masks"
    layout = "expected DIR/images/<stem>.png|jpg|tif and DIR/masks/<stem>.png"
    if not images_dir.is_dir():
        raise DataLayoutError(f"{root} has no images/ folder ({layout})")
    if not masks_dir.is_dir():
        raise DataLayoutError(f"{root} has no masks/ folder ({layout})")
    images: dict[str, Path] = {}
    for path in _images_in(images_dir):
        if path.stem in images:
            raise DataLayoutError(
                f"two images in {images_dir} share the stem {path.stem}: {images[path.stem].name}, {path.name}"
            )
        images[path.stem] = path
    if not images:
        raise DataLayoutError(f"no images in {images_dir} (looked for .png, .jpg, .tif)")
    masks = {
        p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == MASK_SUFFIX and _is_visible_file(p)
    }
    pairs = [Pair(stem, path, masks[stem]) for stem, path in sorted(images.items()) if stem in masks]
    if not pairs:
        raise DataLayoutError(
            f"none of the {len(images)} images in {images_dir} has a mask in {masks_dir} (expected masks/<stem>.png)"
        )
    unmatched = [stem for stem in sorted(images) if stem not in masks]
    if unmatched:
        warnings.warn(
            f"{len(unmatched)} of {len(images)} images in {images_dir} have no mask and are skipped "
            f"(e.g. {unmatched[0]})",
            stacklevel=2,
        )
    if check_sizes:
        for pair in pairs:
            _check_sizes(image_size(pair.image_path), image_size(pair.mask_path), pair.stem)
    return pairs


def _check_sizes(image_hw: tuple[int, int], mask_hw: tuple[int, int], stem: str) -> None:
    if tuple(image_hw) != tuple(mask_hw):
        raise DataLayoutError(
            f"mask {stem} is {mask_hw[0]}x{mask_hw[1]} but its image is {image_hw[0]}x{image_hw[1]}"
        )


def check_pair(image: np.ndarray, mask: np.ndarray, stem: str) -> None:
    """Check that a mask has its image's height and width.

    Raises:
        DataLayoutError: ``mask <stem> is HxW but its image is HxW``.
    """
    _check_sizes(tuple(np.shape(image)[:2]), tuple(np.shape(mask)[:2]), stem)


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair: (image as stored, labels from :func:`read_mask`), checked with :func:`check_pair`.

    A pair of an annotation store (``store_root`` set) is read under the store's lock, so
    its image and mask are those of one committed write.
    """
    if getattr(pair, "store_root", None) is not None:
        from .store import read_committed_pair

        return read_committed_pair(pair)
    image = read_image(pair.image_path)
    mask = read_mask(pair.mask_path)
    check_pair(image, mask, pair.stem)
    return image, mask


def read_splits(directory: str | Path) -> dict[str, list[str]] | None:
    """``DIR/splits.json`` as ``{"train": [...], "val": [...], ...}``, or None when the folder has none.

    A missing ``train`` or ``val`` key reads as an empty list; other lists of stems (e.g. ``test``)
    are kept, and metadata beside them (``name``, ``seed``, counts) is ignored.

    Raises:
        DataLayoutError: the file is not valid JSON or not an object of lists of stems.
    """
    path = Path(directory) / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataLayoutError(f"cannot read {path}: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise DataLayoutError(f"{path} must hold an object like {{\"train\": [stems], \"val\": [stems]}}")
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for key, stems in data.items():
        is_stem_list = isinstance(stems, list) and all(isinstance(s, str) for s in stems)
        if key in ("train", "val") and not is_stem_list:
            raise DataLayoutError(f"{path}: \"{key}\" must be a list of stems (strings)")
        if is_stem_list:  # other lists of stems (e.g. "test") are kept; metadata (name, seed, counts) is not
            splits[str(key)] = list(stems)
    return splits


def stem_fraction(stem: str, seed: int = 0) -> float:
    """A deterministic number in [0, 1) from a stem: the same on every machine and Python run."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(stems: Sequence[str], val_fraction: float = 0.15, seed: int = 0) -> set[str]:
    """The stems that go to validation in a hash-based split.

    Each stem is in validation when ``stem_fraction(stem, seed) < val_fraction``, so its
    side never changes when other stems come and go. When that leaves validation empty
    and there are at least two stems (and ``val_fraction > 0``), the stem with the lowest
    fraction goes to validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    fractions = {stem: stem_fraction(stem, seed) for stem in stems}
    val = {stem for stem, f in fractions.items() if f < val_fraction}
    if not val and len(fractions) >= 2 and val_fraction > 0:
        val = {min(fractions, key=fractions.__getitem__)}
    return val


def split_pairs(
    pairs: Sequence[Pair],
    splits: dict[str, list[str]] | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[list[Pair], list[Pair]]:
    """Split pairs into (train, val), keeping the order of ``pairs``.

    With ``splits`` (from :func:`read_splits`) its train/val lists decide; pairs it does not
    list are split by :func:`hash_split` (with a warning). Without it the whole split is
    hash-based and deterministic by stem.

    Raises:
        DataLayoutError: a stem listed in both train and val.
    """
    stems = [p.stem for p in pairs]
    if splits is None:
        val_stems = hash_split(stems, val_fraction, seed)
    else:
        train_listed, val_listed = set(splits.get("train", [])), set(splits.get("val", []))
        both = sorted(train_listed & val_listed)
        if both:
            raise DataLayoutError(
                f"splits.json lists {len(both)} stems in both train and val (e.g. {both[0]})"
            )
        unlisted = [s for s in stems if s not in train_listed and s not in val_listed]
        if unlisted:
            warnings.warn(
                f"{len(unlisted)} pairs are not in splits.json and are split by stem hash (e.g. {unlisted[0]})",
                stacklevel=2,
            )
        val_stems = val_listed | {s for s in unlisted if stem_fraction(s, seed) < val_fraction}
    train = [p for p in pairs if p.stem not in val_stems]
    val = [p for p in pairs if p.stem in val_stems]
    return train, val
