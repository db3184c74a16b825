"""The annotation store: corrected masks with their images and provenance, append-only and crash-safe.

Layout (a valid training folder in the fixed data layout, so ``io.list_pairs(root)`` reads it)::

    root/images/<stem>.tif      the original pixels, lossless (zlib TIFF), any dtype
    root/masks/<stem>.png       binary masks as 0/255 uint8, instance labels as uint16
    root/manifest.jsonl         one JSON record per line, append-only; the last record per stem wins
    root/splits.json            {"train": [stems], "val": [stems]}, deterministic by stem hash
    root/trash/                 files of removed entries (the manifest keeps their history)
    root/.lock, .pending.json   writer lock and the in-flight write (hidden; list_pairs skips them)

Commit protocol of :meth:`AnnotationStore.add` (under an exclusive ``flock`` on ``root/.lock``):

1. ``.pending.json`` (atomic) records the intended manifest record; when an existing
   entry is updated, its mask is hard-linked to ``.pending-mask.png`` first;
2. image, then mask: each written to a temp file, fsynced and renamed into place;
3. the manifest line is appended with one ``os.write`` and fsynced: **the commit point**;
4. ``.pending*`` are removed and ``splits.json`` is rewritten.

An exception before the commit rolls back (new files removed, the previous mask
restored); a crash is rolled back the same way by the next writer, which also
drops a partial last manifest line and stray temp files. Readers need no lock: they
ignore a trailing partial line and every file that has no committed record.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import threading
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import DataLayoutError, InputImageError
from .io import (
    Pair,
    check_pair,
    fsync_dir,
    hash_split,
    normalise_labels,
    pixel_hash,
    read_image,
    read_mask,
    write_json_atomic,
    write_png_atomic,
    write_tiff_atomic,
)

try:  # POSIX; elsewhere only threads of one process are serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["AnnotationStore", "Entry", "SCHEMA_VERSION", "committed_pairs", "is_store", "read_committed_pair"]

SCHEMA_VERSION = 1
MANIFEST = "manifest.jsonl"
SPLITS = "splits.json"
LOCK = ".lock"
PENDING = ".pending.json"
BACKUP = ".pending-mask.png"
TRASH = "trash"
IMAGE_SUFFIX = ".tif"
MASK_SUFFIX = ".png"
_TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[^.]*)?$")  # io.write_atomic's temporary files
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class Entry:
    """One committed annotation (the latest record of its stem) with its provenance.

    Attributes:
        stem: the file stem in ``images/`` and ``masks/``.
        image_path, mask_path: absolute paths of its files.
        source: where the image came from (a file path or a layer name), if known.
        pixel_hash: :func:`napari_samsp.io.pixel_hash` of the stored image.
        slice_index: the plane of a 3D stack, or None for a 2D image.
        model_version: the model that proposed the mask, if any.
        corrected: whether a person corrected (or drew) the mask.
        time: ISO 8601 UTC time of the record.
        n_objects: instance labels, or connected components of a binary mask.
        image_shape, image_dtype: of the stored image.
        mask_kind: "binary" (0/255 PNG) or "instance" (uint16 labels PNG).
        mask_hash: pixel_hash of the labels as :func:`napari_samsp.io.read_mask` returns them.
        rid: unique id of the manifest record.
        mask_source: where the mask started from when not from the model, e.g.
            ``existing:/data/masks/a.png`` (a Cellpose / StarDist / colleague's mask the user corrected).
        edits: what the person changed before sending (pixels edited, clicks, boxes, brush strokes), if recorded.
    """

    stem: str
    image_path: Path
    mask_path: Path
    source: str | None
    pixel_hash: str
    slice_index: int | None
    model_version: str | None
    corrected: bool
    time: str
    n_objects: int
    image_shape: tuple[int, ...]
    image_dtype: str
    mask_kind: str
    mask_hash: str
    rid: str
    mask_source: str | None = None
    edits: dict[str, int] | None = None

    @classmethod
    def from_record(cls, root: Path, rec: dict[str, Any]) -> "Entry":
        return cls(
            stem=rec["stem"],
            image_path=root / rec["image_file"],
            mask_path=root / rec["mask_file"],
            source=rec.get("source"),
            pixel_hash=rec["pixel_hash"],
            slice_index=rec.get("slice_index"),
            model_version=rec.get("model_version"),
            corrected=bool(rec.get("corrected", True)),
            time=rec.get("time", ""),
            n_objects=int(rec.get("n_objects", 0)),
            image_shape=tuple(rec.get("image_shape", ())),
            image_dtype=rec.get("image_dtype", ""),
            mask_kind=rec.get("mask_kind", ""),
            mask_hash=rec.get("mask_hash", ""),
            rid=rec.get("rid", ""),
            mask_source=rec.get("mask_source"),
            edits=rec.get("edits"),
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _sanitise(text: str) -> str:
    """A safe file-name part: letters, digits, '.', '_', '-' only, at most 60 characters."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return clean[:60].rstrip("._-") or "image"


_STEM = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")


def _tampered(root: Path, what: str, detail: str) -> DataLayoutError:
    return DataLayoutError(
        f"{root}: {what} {detail}; the store folder was edited by hand or tampered with, so nothing was "
        "read, moved or deleted: remove that record (or the .pending.json) or restore the store from a backup"
    )


def _inside(root: Path, rel: Any, sub: str, what: str) -> Path:
    """``root / rel`` when ``rel`` names a file directly in ``root/<sub>`` (symlinks resolved), else refuse.

    Raises:
        DataLayoutError: an absolute path, ``..``, another folder, or a link leading outside the store.
    """
    if not isinstance(rel, str):
        raise _tampered(root, what, f"has a file path that is not text ({rel!r})")
    parts = rel.split("/")
    if len(parts) != 2 or parts[0] != sub or parts[1] in ("", ".", "..") or "\\" in rel or "\0" in rel:
        raise _tampered(root, what, f"names {rel!r}, which is not a file in {sub}/ of the store")
    path = root / rel
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(root / sub):
        raise _tampered(root, what, f"names {rel!r}, which leads outside {root / sub}")
    return path


def _check_record(root: Path, rec: dict[str, Any], what: str) -> None:
    """Refuse a record whose stem or file paths could reach outside the store (see :func:`_inside`)."""
    if not _STEM.match(rec["stem"]):
        raise _tampered(root, what, f"has the stem {rec['stem']!r}, which is not a plain file name")
    if rec.get("op") == "add":
        _inside(root, rec.get("image_file"), "images", what)
        _inside(root, rec.get("mask_file"), "masks", what)


def _append_line(path: Path, data: bytes) -> None:
    """Append one complete manifest line with a single ``os.write``, then fsync: the commit point."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.EIO, f"short write to {path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _prepare_image(image: np.ndarray) -> np.ndarray:
    """Validate one 2D image and return it as it will be stored."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputImageError(f"unsupported image dtype {arr.dtype}; expected integers or floats")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise InputImageError(
            f"expected one 2D image (H, W), (H, W, 3) or (H, W, 4), got shape {tuple(arr.shape)}; "
            "send 3D stacks slice by slice with slice_index"
        )
    if arr.size == 0:
        raise InputImageError(f"image has zero size (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputImageError("image contains NaN or infinite values")
    return np.ascontiguousarray(arr)


def _check_slice_index(slice_index: Any) -> int | None:
    """``slice_index`` as an int (None stays None); raises InputImageError unless it is an integer >= 0."""
    if slice_index is None:
        return None
    if isinstance(slice_index, bool) or not isinstance(slice_index, (int, np.integer)) or slice_index < 0:
        raise InputImageError(f"slice_index must be an integer >= 0, got {slice_index!r}")
    return int(slice_index)


def _prepare_labels(labels: np.ndarray, hw: tuple[int, int], allow_empty: bool) -> tuple[np.ndarray, bool]:
    """Validate labels against the image size -> (labels as read_mask returns them, is_binary)."""
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.shape != hw:
        shape = "x".join(str(s) for s in lab.shape) or "a scalar"
        raise InputImageError(f"labels are {shape} but the image is {hw[0]}x{hw[1]}")
    out, is_binary = normalise_labels(lab, what="labels")
    if not out.any() and not allow_empty:
        raise InputImageError("the mask is empty: nothing to send")
    if out.dtype != np.uint16:  # labels above 65535: renumber 1..N when they fit a uint16 PNG
        values, inverse = np.unique(out, return_inverse=True)
        if len(values) > 65536:
            raise InputImageError(f"labels hold {len(values) - 1} objects; a uint16 mask holds at most 65535")
        start = 0 if values[0] == 0 else 1
        out = (inverse.reshape(hw) + start).astype(np.uint16)
    return out, is_binary


def _count_objects(labels: np.ndarray, is_binary: bool) -> int:
    if not labels.any():
        return 0
    if is_binary:
        from scipy import ndimage

        return int(ndimage.label(labels > 0)[1])
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


class AnnotationStore:
    """Corrected annotations on disk, with provenance; see the module docstring for the format.

    Args:
        root: the store folder; created (with ``images/`` and ``masks/``) unless ``create`` is False.
        create: create a missing store instead of raising.
        val_fraction: share of stems :meth:`splits` (and every :meth:`add`) puts in validation.

    Raises:
        DataLayoutError: ``root`` is missing and ``create`` is False, or is a file.
    """

    def __init__(self, root: str | Path, *, create: bool = True, val_fraction: float = 0.2) -> None:
        self.root = Path(root)
        self.val_fraction = float(val_fraction)
        if self.root.exists() and not self.root.is_dir():
            raise DataLayoutError(f"annotation store {self.root} is a file, not a folder")
        if not self.root.is_dir() and not create:
            raise DataLayoutError(f"annotation store not found: {self.root}")
        if create:
            for sub in ("images", "masks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        # (inode, bytes parsed, last parsed line, records): later reads parse only what was appended
        self._cache: tuple[int, int, bytes, list[dict[str, Any]]] | None = None
        # Finish or roll back an interrupted write when no other writer is busy (skipped when read-only).
        try:
            with self._locked(blocking=False) as acquired:
                if acquired:
                    self._recover(full=True)
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"AnnotationStore({str(self.root)!r})"

    # ------------------------------------------------------------------ paths

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def image_path(self, stem: str) -> Path:
        return self.root / "images" / f"{stem}{IMAGE_SUFFIX}"

    def mask_path(self, stem: str) -> Path:
        return self.root / "masks" / f"{stem}{MASK_SUFFIX}"

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[bool]:
        """Exclusive writer lock: a per-process lock for threads plus ``flock`` on ``root/.lock``."""
        key = str(self.root.resolve())
        with _PROCESS_LOCKS_GUARD:
            thread_lock = _PROCESS_LOCKS.setdefault(key, threading.Lock())
        if not thread_lock.acquire(blocking=blocking):
            yield False
            return
        fd = -1
        try:
            if fcntl is not None:
                fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                except OSError as exc:  # e.g. a file system without locks
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
                    warnings.warn(f"no file locks on {self.root}: use one writer at a time", stacklevel=3)
            yield True
        finally:
            if fd >= 0:
                os.close(fd)  # closing the descriptor releases the flock
            thread_lock.release()

    # ------------------------------------------------------------------ reading

    def _records(self) -> list[dict[str, Any]]:
        """Every complete, valid manifest record in order.

        The parse is cached: when the file only grew since the last call (same inode, the
        last parsed line still in place) just the appended bytes are parsed.
        """
        try:
            f = open(self.manifest_path, "rb")
        except FileNotFoundError:
            self._cache = None
            return []
        with f:
            st = os.fstat(f.fileno())
            cache, offset, records, last = self._cache, 0, [], b""
            if cache is not None and cache[0] == st.st_ino and cache[1] <= st.st_size:
                ino, parsed, last_line, cached = cache
                start = parsed - len(last_line)
                f.seek(start)
                if f.read(len(last_line)) == last_line:  # nothing before was rewritten
                    offset, records, last = parsed, cached, last_line
                    if parsed == st.st_size:
                        return cached
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # after the last newline: a partial record of an interrupted write
        if end == 0:
            return records
        lines = data[:end].split(b"\n")[:-1]
        new, bad = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("stem"), str) or rec.get("op") not in ("add", "remove"):
                bad += 1
                continue
            _check_record(self.root, rec, f"the manifest record of {rec['stem']!r}")
            new.append(rec)
        if bad:
            warnings.warn(f"{self.manifest_path}: skipped {bad} unreadable records", stacklevel=3)
        records = records + new  # a new list: earlier callers keep theirs
        last = lines[-1] + b"\n" if lines else last
        self._cache = (st.st_ino, offset + end, last, records)
        return records

    def _live(self, records: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """The latest record per stem, without removed stems, in order of first appearance."""
        live: dict[str, dict[str, Any]] = {}
        for rec in self._records() if records is None else records:
            if rec["op"] == "add":
                live[rec["stem"]] = rec
            else:
                live.pop(rec["stem"], None)
        return live

    def _has_files(self, rec: dict[str, Any]) -> bool:
        return (self.root / rec["image_file"]).is_file() and (self.root / rec["mask_file"]).is_file()

    def entries(self) -> list[Entry]:
        """The committed entries (latest record per stem) whose files exist.

        Entries whose files have vanished are skipped with a warning; see :meth:`missing`.
        """
        live = self._live()
        present = [Entry.from_record(self.root, rec) for rec in live.values() if self._has_files(rec)]
        if len(present) < len(live):
            gone = [stem for stem, rec in live.items() if not self._has_files(rec)]
            warnings.warn(
                f"{len(gone)} entries of {self.root} have missing files and are skipped (e.g. {gone[0]})",
                stacklevel=2,
            )
        return present

    def missing(self) -> list[str]:
        """Stems with a committed record whose image or mask file no longer exists."""
        return [stem for stem, rec in self._live().items() if not self._has_files(rec)]

    def __len__(self) -> int:
        return sum(1 for rec in self._live().values() if self._has_files(rec))

    def __contains__(self, stem: object) -> bool:
        rec = self._live().get(stem) if isinstance(stem, str) else None
        return rec is not None and self._has_files(rec)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    def corrected_count(self) -> int:
        """How many entries hold a mask a person corrected."""
        return sum(1 for rec in self._live().values() if rec.get("corrected", True) and self._has_files(rec))

    def get(self, stem: str) -> Entry:
        """The entry of ``stem``.

        Raises:
            KeyError: no committed entry with files for this stem.
        """
        rec = self._live().get(stem)
        if rec is None or not self._has_files(rec):
            raise KeyError(f"no entry {stem!r} in the annotation store {self.root}")
        return Entry.from_record(self.root, rec)

    def find(self, image: np.ndarray, slice_index: int | None = None) -> Entry | None:
        """The entry holding these pixels (and slice index), or None."""
        phash = pixel_hash(_prepare_image(image))
        for rec in self._live().values():
            if rec["pixel_hash"] == phash and rec.get("slice_index") == slice_index and self._has_files(rec):
                return Entry.from_record(self.root, rec)
        return None

    def load(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """(image as stored, labels) of an entry; labels as :func:`napari_samsp.io.read_mask` returns them
        (binary masks as {0, 1}, instance labels as uint16).

        Raises:
            KeyError: unknown stem. InputImageError / DataLayoutError: unreadable or mismatched files.
        """
        entry = self.get(stem)
        return read_committed_pair(Pair(stem, entry.image_path, entry.mask_path, store_root=self.root))

    def verify(self) -> list[str]:
        """Check every committed entry end to end; returns one line per problem (empty when all is well).

        Reads every file: for tests and ``fsck``-style checks, not for the hot path.
        """
        problems = []
        for stem, rec in self._live().items():
            if not self._has_files(rec):
                problems.append(f"{stem}: missing files")
                continue
            try:
                image = read_image(self.root / rec["image_file"])
                labels = read_mask(self.root / rec["mask_file"])
                check_pair(image, labels, stem)
            except (InputImageError, DataLayoutError) as exc:
                problems.append(f"{stem}: {exc}")
                continue
            if pixel_hash(image) != rec["pixel_hash"]:
                problems.append(f"{stem}: image pixels differ from the record")
            if rec.get("mask_hash") and pixel_hash(labels) != rec["mask_hash"]:
                problems.append(f"{stem}: mask differs from the record")
        return problems

    # ------------------------------------------------------------------ splits

    def _split_dict(self, stems: list[str], val_fraction: float) -> dict[str, list[str]]:
        val = hash_split(stems, val_fraction, seed=0)
        return {"train": sorted(s for s in stems if s not in val), "val": sorted(val)}

    def _write_splits(self, stems: list[str]) -> None:
        try:
            write_json_atomic(self.root / SPLITS, self._split_dict(stems, self.val_fraction))
        except OSError as exc:  # the entry is committed; a stale splits.json is still a valid split
            warnings.warn(f"could not update {self.root / SPLITS}: {exc}", stacklevel=3)

    def splits(self, val_fraction: float | None = None) -> dict[str, list[str]]:
        """Deterministic train/val split of the entries by stem hash; rewrites ``splits.json`` atomically.

        A stem's side depends only on the stem (see :func:`napari_samsp.io.hash_split`), so
        adding entries never moves existing ones, except that a store of two or more
        entries always has at least one in validation.
        """
        fraction = self.val_fraction if val_fraction is None else float(val_fraction)
        with self._locked():
            result = self._split_dict([e.stem for e in self.entries()], fraction)
            write_json_atomic(self.root / SPLITS, result)
        return result

    # ------------------------------------------------------------------ writing

    def _stem_for(
        self, phash: str, slice_index: int | None, name: str | None, source: str | None, live: dict[str, dict]
    ) -> str:
        for stem, rec in live.items():
            if rec["pixel_hash"] == phash and rec.get("slice_index") == slice_index:
                return stem  # the same image (and plane) again: update its entry
        base = _sanitise(name if name else (Path(str(source)).stem if source else "image"))
        suffix = "" if slice_index is None else f"_z{slice_index:04d}"
        for n in (10, 16, 64):  # a longer hash only on a (practically impossible) prefix clash
            stem = f"{base}_{phash[:n]}{suffix}"
            if stem not in live:
                return stem
        raise RuntimeError(f"cannot make a unique stem for {base}")  # pragma: no cover

    def add(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        *,
        source: str | os.PathLike[str] | None = None,
        slice_index: int | None = None,
        model_version: str | None = None,
        corrected: bool = True,
        name: str | None = None,
        allow_empty: bool = False,
        mask_source: str | None = None,
        edits: dict[str, int] | None = None,
    ) -> Entry:
        """Store one 2D image with its labels, or update the entry of the same pixels and slice.

        The stem is ``<name or source stem>_<pixel hash[:10]>[_z<slice>]``; sending the same
        image (same pixel hash and slice index) again replaces its mask and appends a new
        record (the last one wins) instead of adding a duplicate.

        Args:
            image: (H, W) gray or (H, W, 3|4) RGB(A), any integer or float dtype; stored losslessly.
            labels: (H, W) labels, 0 = background; binary ({0,1}, {0,255}, bool) or instance labels.
            source: where the image came from (file path or layer name); provenance and the stem.
            slice_index: the plane of a 3D stack (send stacks plane by plane).
            model_version: the model that proposed the mask.
            corrected: whether a person corrected the mask (False: accepted as proposed).
            name: the stem's readable part (default: the source's file stem).
            allow_empty: accept an all-background mask (a valid "nothing here" annotation).
            mask_source: where the mask started from when not from the model
                (``existing:<mask file>``); recorded only when given.
            edits: what the person changed, e.g. ``{"pixels_edited": 120, "clicks": 2, "boxes": 0,
                "brush_strokes": 1}`` (integers); recorded as the entry's ``edits``.

        Raises:
            InputImageError: invalid image or labels, labels of another size, or an empty mask;
                nothing is written then.
        """
        img = _prepare_image(image)
        hw = (int(img.shape[0]), int(img.shape[1]))
        lab, is_binary = _prepare_labels(labels, hw, allow_empty)
        slice_index = _check_slice_index(slice_index)
        phash = pixel_hash(img)
        source_str = None if source is None else os.fspath(source)
        on_disk = (lab > 0).astype(np.uint8) * 255 if is_binary else lab

        with self._locked():
            self._recover()
            live = dict(self._live())
            stem = self._stem_for(phash, slice_index, name, source_str, live)
            record = {
                "v": SCHEMA_VERSION,
                "op": "add",
                "stem": stem,
                "rid": uuid.uuid4().hex,
                "time": _now(),
                "source": source_str,
                "pixel_hash": phash,
                "slice_index": slice_index,
                "model_version": model_version,
                "corrected": bool(corrected),
                **({"edits": {str(k): int(v) for k, v in edits.items()}} if edits is not None else {}),
                "n_objects": _count_objects(lab, is_binary),
                "image_shape": list(img.shape),
                "image_dtype": img.dtype.str,
                "mask_kind": "binary" if is_binary else "instance",
                "mask_hash": pixel_hash(lab),
                "image_file": f"images/{self.image_path(stem).name}",
                "mask_file": f"masks/{self.mask_path(stem).name}",
            }
            if mask_source is not None:
                record["mask_source"] = str(mask_source)
            self._commit_add(record, img, on_disk, live)
            live[stem] = record
            self._write_splits(list(live))
        return Entry.from_record(self.root, record)

    def _commit_add(self, record: dict[str, Any], img: np.ndarray, on_disk: np.ndarray,
                    live: dict[str, dict[str, Any]]) -> None:
        """Steps 1-4 of the commit protocol for ``record``; call with the lock held.

        ``img``: the pixels to store; ``on_disk``: the mask as written (0/255 uint8 or labels).
        Any failure before the manifest line is appended rolls the files back, then re-raises.
        """
        stem = record["stem"]
        prev = live.get(stem)
        image_path, mask_path = self.image_path(stem), self.mask_path(stem)
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
        manifest_size = self.manifest_path.stat().st_size if self.manifest_path.exists() else 0
        pending = {"record": record, "prev_live": prev is not None, "prev_mask": mask_path.exists()}
        write_json_atomic(self.root / PENDING, pending)
        try:
            if prev is not None and pending["prev_mask"]:
                self._backup_mask(mask_path)
            if prev is None or not image_path.is_file():  # an update has the same pixels by construction
                write_tiff_atomic(image_path, img)
            write_png_atomic(mask_path, on_disk)
            _append_line(self.manifest_path, line)  # commit point
        except BaseException:
            try:
                self._truncate_manifest(manifest_size)
                self._rollback(pending, live)
            except OSError as exc:  # the next writer retries the roll-back
                warnings.warn(f"roll-back of {stem} incomplete ({exc}); the next write repairs it", stacklevel=3)
            raise
        for leftover in (self.root / BACKUP, self.root / PENDING):
            with contextlib.suppress(OSError):
                _unlink(leftover)

    def remove(self, stem: str) -> None:
        """Remove an entry: appends a tombstone record and moves its files to ``trash/``.

        Raises:
            KeyError: no committed entry with this stem.
        """
        with self._locked():
            self._recover()
            live = dict(self._live())
            if stem not in live:
                raise KeyError(f"no entry {stem!r} in the annotation store {self.root}")
            record = {"v": SCHEMA_VERSION, "op": "remove", "stem": stem, "rid": uuid.uuid4().hex, "time": _now()}
            _append_line(self.manifest_path, (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii"))
            try:
                self._trash(live.pop(stem))
            except OSError as exc:  # removed all the same; the next opening moves the files
                warnings.warn(f"could not move the files of {stem} to {self.root / TRASH}: {exc}", stacklevel=2)
            self._write_splits(list(live))

    # ------------------------------------------------------------------ recovery

    def _backup_mask(self, mask_path: Path) -> None:
        backup = self.root / BACKUP
        _unlink(backup)
        try:
            os.link(mask_path, backup)
        except OSError:  # no hard links here: copy
            shutil.copyfile(mask_path, backup)
        fsync_dir(self.root)

    def _truncate_manifest(self, size: int) -> None:
        if self.manifest_path.exists() and self.manifest_path.stat().st_size > size:
            with open(self.manifest_path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())

    def _trash(self, rec: dict[str, Any]) -> None:
        for rel in (rec["image_file"], rec["mask_file"]):
            src = self.root / rel
            if src.exists():
                dst = self.root / TRASH / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)

    def _rollback(self, pending: dict[str, Any], live: dict[str, dict[str, Any]]) -> None:
        """Undo an uncommitted add: restore the previous mask, or remove the new files."""
        rec = pending["record"]
        image_path, mask_path = self.root / rec["image_file"], self.root / rec["mask_file"]
        backup = self.root / BACKUP
        if backup.exists():
            os.replace(backup, mask_path)
        elif rec["stem"] not in live:
            _unlink(image_path)
            _unlink(mask_path)
        elif not pending.get("prev_mask", True):
            _unlink(mask_path)
        # else: the crash came before the previous mask was touched
        _unlink(self.root / PENDING)
        for folder in (self.root, image_path.parent, mask_path.parent):
            fsync_dir(folder)

    def _recover(self, full: bool = False) -> None:
        """Repair after an interrupted writer; call with the lock held.

        Every write does the cheap part (a partial last manifest line, an interrupted add);
        ``full`` (on opening, or after an interrupted add) also sweeps stray temp files and
        the files of removed entries.
        """
        manifest = self.manifest_path
        if manifest.exists() and manifest.stat().st_size:
            with open(manifest, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.seek(max(0, size - (1 << 20)))  # a record is far shorter than 1 MiB
                    tail = f.read()
                    keep = size - len(tail) + tail.rfind(b"\n") + 1
                    f.truncate(keep)
                    os.fsync(f.fileno())
                    warnings.warn(f"{manifest}: dropped a partial last record of an interrupted write", stacklevel=3)
        records = self._records()
        pending_path = self.root / PENDING
        if pending_path.exists():
            try:
                pending = json.loads(pending_path.read_text(encoding="utf-8"))
                rid = pending["record"]["rid"]
            except (OSError, ValueError, KeyError, TypeError):
                pending, rid = None, None
            if pending is not None:
                if not isinstance(pending.get("record"), dict) or not isinstance(pending["record"].get("stem"), str):
                    pending = None
                else:
                    _check_record(self.root, pending["record"], f"the pending write {PENDING}")
            if pending is None:
                _unlink(pending_path)
            elif any(r.get("rid") == rid for r in records):  # committed: only the clean-up was missed
                _unlink(self.root / BACKUP)
                _unlink(pending_path)
            else:
                self._rollback(pending, self._live(records))
            full = True
        _unlink(self.root / BACKUP)
        if not full:
            return
        for folder in (self.root, self.root / "images", self.root / "masks"):
            if folder.is_dir():
                for path in folder.iterdir():
                    if _TMP_NAME.match(path.name):
                        _unlink(path)
        live = self._live(records)
        removed = {r["stem"]: r for r in records if r["op"] == "add" and r["stem"] not in live}
        for rec in removed.values():  # removed entries whose files were not moved yet
            if any((self.root / rec[k]).exists() for k in ("image_file", "mask_file")):
                self._trash(rec)


# ---------------------------------------------------------------------- readers of the store folder


def is_store(root: str | Path) -> bool:
    """Whether ``root`` is an annotation store (it has a manifest), not a plain data-layout folder."""
    return (Path(root) / MANIFEST).is_file()


@contextlib.contextmanager
def _shared_lock(root: Path) -> Iterator[None]:
    """A shared ``flock`` on ``root/.lock``: waits while a writer holds it, admits other readers.

    Writers hold the exclusive lock from before their first file until after their commit,
    so under this lock every file on disk is either committed or left by a crashed writer
    (then ``.pending.json`` exists and names it). Without a lock file (a store no writer of
    this version touched, or a read-only one) no lock is taken.
    """
    fd = -1
    if fcntl is not None:
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            try:
                fd = os.open(root / LOCK, flags, 0o644)
                break
            except OSError:
                continue
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        yield
    finally:
        if fd >= 0:
            os.close(fd)


def _pending_stem(root: Path) -> str | None:
    """The stem a crashed writer left half-written (its ``.pending.json``), if any; call under the lock."""
    try:
        pending = json.loads((root / PENDING).read_text(encoding="utf-8"))
        stem = pending["record"]["stem"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # unreadable: which entry it touched is unknown
    return stem if isinstance(stem, str) else ""


def committed_pairs(root: str | Path) -> list[Pair]:
    """The (image, mask) pairs of the committed entries of a store, sorted by stem.

    This is what :func:`napari_samsp.io.list_pairs` returns for a store folder: files of
    a write in flight, or of a crashed writer, are never listed. Opening the store first
    repairs an interrupted write when this process may write there; on a read-only store
    an entry a crashed writer touched is left out with a warning.
    """
    store = AnnotationStore(root, create=False)  # repairs an interrupted write when it can
    with _shared_lock(store.root):
        pending = _pending_stem(store.root)
        live = store._live()
    if pending is not None:
        warnings.warn(
            f"{store.root} has an interrupted write (open it with write access to repair it); "
            + (f"entry {pending} is left out" if pending else "its entries may be incomplete"),
            stacklevel=3,
        )
    pairs = [
        Pair(stem, store.root / rec["image_file"], store.root / rec["mask_file"], store_root=store.root)
        for stem, rec in sorted(live.items())
        if stem != pending and store._has_files(rec)
    ]
    if not pairs:
        raise DataLayoutError(f"the annotation store {store.root} has no committed entries yet")
    return pairs


def read_committed_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Read one store pair under the shared lock: the image and the mask of one committed state.

    Raises:
        DataLayoutError: the entry is being repaired after a crash, or was removed since it was listed.
    """
    root = Path(pair.store_root)  # type: ignore[arg-type]
    for attempt in range(2):
        with _shared_lock(root):
            pending = _pending_stem(root)
            if pending is None or (pending and pending != pair.stem):
                if not (pair.image_path.is_file() and pair.mask_path.is_file()):
                    raise DataLayoutError(f"entry {pair.stem} was removed from {root} while it was being read")
                image = read_image(pair.image_path)
                labels = read_mask(pair.mask_path)
                check_pair(image, labels, pair.stem)
                return image, labels
        if attempt == 0:
            AnnotationStore(root, create=False)  # a crashed writer's leftovers: repair them and retry
    raise DataLayoutError(
        f"entry {pair.stem} of {root} was left half-written by an interrupted write; "
        "open the store with write access (e.g. in the plugin) to repair it"
    )
