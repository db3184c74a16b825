"""Interactive prompting on one 2D image, with an on-disk embedding cache.

The expensive step, the image encoder, runs once per image and model; every
click, box or mask prompt afterwards only runs the light mask decoder. Embeddings
are cached in memory and (optionally) on disk, keyed by the model id and a hash
of the normalised uint8 RGB pixels the model sees, so reopening an image, or a
second napari session, skips the encoder.

Coordinates at this API are on the *original* pixel grid of the image, in
(x, y) order (column, row), like upstream ``SamPredictor``. napari gives
(row, col): callers flip.

Two ways to use it, one implementation:

* values: ``emb = predictor.embed(image)`` gives an :class:`~napari_samsp.embedding.Embedding`
  and ``predictor.predict(..., embedding=emb)`` decodes on it; the predictor holds no image,
  so any number of callers can share it (the NumPy API over :meth:`SamModel.decode`).
* compatibility (upstream ``SamPredictor``'s style): ``set_image(image)`` keeps one embedding
  in the predictor, and ``predict(...)`` without ``embedding`` decodes on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .embedding import MIRROR_VIEWS, Embedding
from .errors import InputImageError, SamspError
from .models.sam_model import ImageFeatures, SamModel
from .threads import check_thread_limit, limited_threads

if TYPE_CHECKING:
    from .models.checkpoints import LoadedModel
from .transforms import LEGACY_PREPROCESSING, InputTransform, mirror, model_preprocessing, split_planes, to_rgb_uint8

__all__ = [
    "Embedding",
    "EmbeddingCache",
    "Prediction",
    "Predictor",
    "PromptError",
    "as_plane",
    "check_flip_views",
    "default_cache_root",
    "image_key",
]

_CACHE_FORMAT = 1
_STALE_TMP_S = 3600.0


class PromptError(SamspError, ValueError):
    """A prompt (points, labels, box, mask) of the wrong shape or with invalid values."""


def default_cache_root() -> Path | None:
    """Where embeddings are cached on disk: ``$SAMSP_CACHE`` or ``~/.cache/napari-samsp/embeddings``.

    ``SAMSP_CACHE`` set to ``off``, ``none`` or ``0`` disables the disk cache (None).
    """
    env = os.environ.get("SAMSP_CACHE")
    if env is not None:
        if env.strip().lower() in ("", "off", "none", "0", "false"):
            return None
        return Path(env).expanduser()
    return Path.home() / ".cache" / "napari-samsp" / "embeddings"


def image_key(rgb: np.ndarray) -> str:
    """Content hash of a normalised (H, W, 3) uint8 plane, its shape included."""
    arr = np.ascontiguousarray(rgb)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _array_digest(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr)
    return hashlib.blake2b(memoryview(a).cast("B"), digest_size=16).hexdigest()


def _safe_dirname(model_id: str) -> str:
    """A filesystem-safe, collision-free folder name for a model id."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[:48] or "model"
    return f"{stem}-{hashlib.blake2b(model_id.encode(), digest_size=6).hexdigest()}"


def _zarr_write_group(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for name, data in arrays.items():
        if hasattr(group, "create_array"):  # zarr >= 3
            arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=data.shape)
            arr[...] = data
        else:  # zarr 2
            group.create_dataset(name, data=data, chunks=data.shape)
    group.attrs.update(attrs)


def _zarr_read_group(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    arrays = {name: np.asarray(group[name][...]) for name in attrs.get("arrays", [])}
    return arrays, attrs


class EmbeddingCache:
    """Image features keyed by (model id, pixel hash): a small in-memory LRU in front of an optional zarr store.

    Disk layout: ``root/<model dir>/<pixel hash>.zarr`` holding the arrays
    ``embeddings`` (C, h, w) and, for SAM-UNet, ``hires`` (C', 4h, 4w), both
    float32 (exact: a cache hit gives bit-identical masks). Each entry's attrs
    hold the model id, the key, the format version and a digest of every array,
    so a truncated or tampered entry is detected, removed and recomputed.
    Entries are written into a temporary folder and moved into place with one
    ``os.replace``: a killed process leaves at most a stray temporary folder,
    never a half entry that is read later.

    Size per image: ``4 * C * h * w`` bytes, e.g. 512 KiB for ``tiny``
    (128 x 32 x 32) and 4 MiB for official ``vit_b`` (256 x 64 x 64).

    The model id must change whenever the weights change (a fine-tuned model is a
    new id); the cache cannot tell two models with the same id apart.

    Args:
        root: folder for the disk cache; None keeps entries in memory only.
        max_memory_entries: how many images the in-memory LRU keeps.
    """

    def __init__(self, root: str | Path | None, max_memory_entries: int = 4) -> None:
        self.root = None if root is None else Path(root).expanduser()
        self.max_memory_entries = max(1, int(max_memory_entries))
        self._memory: OrderedDict[tuple[str, str], ImageFeatures] = OrderedDict()
        self._swept: set[Path] = set()
        self._warned = False
        self.hits = 0
        self.misses = 0

    @classmethod
    def default(cls, max_memory_entries: int = 4) -> "EmbeddingCache":
        """The cache at :func:`default_cache_root` (memory-only when that is disabled)."""
        return cls(default_cache_root(), max_memory_entries)

    def __repr__(self) -> str:
        return f"EmbeddingCache(root={self.root!r}, memory={len(self._memory)}/{self.max_memory_entries})"

    # -- paths -----------------------------------------------------------------
    def entry_path(self, model_id: str, key: str) -> Path | None:
        """The folder of one entry on disk (None for a memory-only cache)."""
        if self.root is None:
            return None
        return self.root / _safe_dirname(model_id) / f"{key}.zarr"

    # -- public API ------------------------------------------------------------
    def get(self, model_id: str, key: str) -> ImageFeatures | None:
        """Cached features (batch 1, CPU, float32) or None."""
        mem_key = (model_id, key)
        feats = self._memory.get(mem_key)
        if feats is not None:
            self._memory.move_to_end(mem_key)
            self.hits += 1
            return feats
        feats = self._read_disk(model_id, key)
        if feats is not None:
            self._remember(mem_key, feats)
            self.hits += 1
            return feats
        self.misses += 1
        return None

    def put(self, model_id: str, key: str, features: ImageFeatures) -> ImageFeatures:
        """Store features of one image (batch 1); a failing disk write only warns.

        Returns the stored copy (CPU, float32, ordinary tensors even when
        ``features`` were made under ``torch.inference_mode``, so they can feed a
        differentiable decoder, e.g. decoder-only fine-tuning from cached embeddings).
        """
        if len(features) != 1:
            raise ValueError(f"cache entries hold one image, got a batch of {len(features)}")
        feats = features.to("cpu", torch.float32)
        feats = ImageFeatures(feats.embeddings.detach().clone(), None if feats.hires is None else feats.hires.detach().clone())
        self._remember((model_id, key), feats)
        if self.root is not None:
            try:
                self._write_disk(model_id, key, feats)
            except Exception as exc:  # the cache is an optimisation: never fail the caller
                if not self._warned:
                    warnings.warn(f"embedding cache: cannot write under {self.root}: {exc}", stacklevel=2)
                    self._warned = True
        return feats

    def clear_memory(self) -> None:
        self._memory.clear()

    def clear(self, model_id: str | None = None) -> None:
        """Forget everything (or one model's entries), in memory and on disk."""
        if model_id is None:
            self._memory.clear()
            if self.root is not None and self.root.exists():
                for child in self.root.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
            return
        for k in [k for k in self._memory if k[0] == model_id]:
            del self._memory[k]
        if self.root is not None:
            shutil.rmtree(self.root / _safe_dirname(model_id), ignore_errors=True)

    def disk_usage(self) -> int:
        """Bytes used on disk by the cache."""
        if self.root is None or not self.root.exists():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    # -- internals ---------------------------------------------------------------
    def _remember(self, mem_key: tuple[str, str], feats: ImageFeatures) -> None:
        self._memory[mem_key] = feats
        self._memory.move_to_end(mem_key)
        while len(self._memory) > self.max_memory_entries:
            self._memory.popitem(last=False)

    def _read_disk(self, model_id: str, key: str) -> ImageFeatures | None:
        path = self.entry_path(model_id, key)
        if path is None or not path.is_dir():
            return None
        try:
            arrays, attrs = _zarr_read_group(path)
            if attrs.get("format") != _CACHE_FORMAT or attrs.get("model_id") != model_id or attrs.get("key") != key:
                raise ValueError("entry metadata does not match")
            digests = attrs["digests"]
            if "embeddings" not in arrays:
                raise ValueError("no embeddings array")
            for name, arr in arrays.items():
                if arr.dtype != np.float32 or arr.ndim != 3 or _array_digest(arr) != digests[name]:
                    raise ValueError(f"array {name} is damaged")
            emb = torch.from_numpy(arrays["embeddings"].copy())[None]
            hires = arrays.get("hires")
            return ImageFeatures(emb, None if hires is None else torch.from_numpy(hires.copy())[None])
        except Exception:  # noqa: BLE001 - a corrupt/foreign entry raises any type from zarr/numpy: drop it, recompute
            # Corrupt, truncated or foreign: drop it; the caller recomputes and rewrites.
            self._discard(path)
            return None

    def _write_disk(self, model_id: str, key: str, feats: ImageFeatures) -> None:
        final = self.entry_path(model_id, key)
        assert final is not None
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._sweep_stale(parent)
        arrays = {"embeddings": feats.embeddings[0].numpy()}
        if feats.hires is not None:
            arrays["hires"] = feats.hires[0].numpy()
        attrs = {
            "format": _CACHE_FORMAT,
            "model_id": model_id,
            "key": key,
            "arrays": sorted(arrays),
            "digests": {name: _array_digest(a) for name, a in arrays.items()},
            "created": time.time(),
        }
        # A folder (zarr group), not a file, so not io.write_atomic: it is published with one
        # os.replace and, being a disposable cache, not fsynced; a racing writer's entry wins.
        tmp = parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _zarr_write_group(tmp, arrays, json.loads(json.dumps(attrs)))
            if final.exists():
                self._discard(final)
            try:
                os.replace(tmp, final)
            except OSError:
                # Another process put the same entry in place first: keep theirs.
                if not final.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _discard(path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep_stale(self, folder: Path) -> None:
        """Remove temporary folders that killed processes left behind (once per folder and session)."""
        if folder in self._swept:
            return
        self._swept.add(folder)
        now = time.time()
        for child in folder.iterdir():
            if child.name.startswith((".tmp-", ".trash-")):
                try:
                    if now - child.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(child, ignore_errors=True)
                except OSError:
                    pass


@dataclass
class Prediction:
    """Masks for one prompt set.

    Attributes:
        masks: (M, H, W) bool on the original grid; M = 3 with ``multimask_output``, else 1.
        logits: (M, L, L) float32 low-resolution logits; pass ``logits[i:i+1]`` back as ``mask_input``.
        scores: (M,) float32 predicted IoU.
    """

    masks: np.ndarray
    logits: np.ndarray
    scores: np.ndarray

    @property
    def best_index(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.scores))

    def best(self) -> "Prediction":
        """The single best mask (M = 1)."""
        i = self.best_index
        return Prediction(self.masks[i : i + 1], self.logits[i : i + 1], self.scores[i : i + 1])


def _as_float_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{name} must be numeric: {exc}") from None
    if not np.isfinite(arr).all():
        raise PromptError(f"{name} contains NaN or infinite values")
    return arr


def as_plane(image: np.ndarray, rgb: bool | None = None) -> np.ndarray:
    """The one 2D plane of ``image``: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).

    Raises:
        InputImageError: a stack, 1D, 5D or empty array.
    """
    arr = np.asarray(image)
    if rgb is None and arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    planes, is_stack = split_planes(arr, rgb)
    if is_stack:
        raise InputImageError(
            f"expected one 2D image, got a stack of {len(planes)} planes (shape {arr.shape}); "
            "segment it plane by plane"
        )
    plane = planes[0]
    if rgb is False and plane.ndim != 2:
        raise InputImageError(f"rgb=False needs a (H, W) image, got shape {plane.shape}")
    return plane


def check_flip_views(views: int) -> int:
    """``views`` as an int when it is a number of mirror views (1, 2 or 4); ValueError otherwise."""
    if isinstance(views, bool) or views not in (1, 2, 4):
        raise ValueError(f"flip_views must be 1, 2 or 4, got {views!r}")
    return int(views)


class Predictor:
    """Prompted segmentation of 2D images: the model, its device and the embedding cache.

    :meth:`embed` turns an image into an :class:`~napari_samsp.embedding.Embedding`; the
    decoding methods take it as ``embedding=`` and leave the predictor unchanged, so one
    predictor serves any number of images and threads. :meth:`set_image` keeps one
    embedding for calls without ``embedding`` (upstream ``SamPredictor``'s style).

    Args:
        model: a :class:`SamModel` (plain SAM or SAM-UNet), in eval mode.
        model_id: identifies the weights for the embedding cache; must change when the weights change.
        cache: an :class:`EmbeddingCache`, a folder for one, or None for a private
            memory-only cache of a few images.
        device: where to run; moves the model there. None keeps the model's device.
        cache_dir: alias of ``cache`` given as a folder.
        flip_views: prompted decodes (clicks, boxes; propagation passes 1) average the logits of this many
            views of the image: 1 (the image alone), 2 (and its left-right mirror) or 4 (and the
            top-bottom and the doubly mirrored one). Each view is embedded once with the image
            (:meth:`embed`) and costs one more decoder run per prompt; the model card's
            ``prompt_flip_views`` says what its model was measured best with.
        decode_threads: torch CPU threads for one prompt set's decode (:meth:`predict`; None:
            torch's setting). A click decodes a few small tensors, where waking more threads
            costs more than it gains (see :mod:`napari_samsp.threads`); batches keep every thread.
    """

    def __init__(
        self,
        model: SamModel,
        model_id: str,
        cache: EmbeddingCache | str | Path | None = None,
        device: torch.device | str | None = None,
        *,
        cache_dir: str | Path | None = None,
        flip_views: int = 1,
        decode_threads: int | None = 1,
    ) -> None:
        self.flip_views = check_flip_views(flip_views)
        self.decode_threads = check_thread_limit(decode_threads, "decode_threads")
        if cache is None and cache_dir is not None:
            cache = cache_dir
        if cache is None:
            cache = EmbeddingCache(None)
        elif not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache(cache)
        if device is not None:
            model = model.to(torch.device(device))
        self.model = model
        self.model_id = str(model_id)
        digest = getattr(model, "weights_digest", None)  # set by load_model: the tensors' content hash
        self._cache_id = f"{self.model_id}#{digest}" if digest else self.model_id
        self.cache = cache
        self.device = next(model.parameters()).device
        self._embedding: Embedding | None = None  # set_image's (compatibility layer)
        self.last_embed_was_cached = False

    @classmethod
    def for_loaded(cls, loaded: "LoadedModel", cache: EmbeddingCache | str | Path | None = None) -> "Predictor":
        """The predictor a loaded model's card asks for: its weights and id, prompts decoded with the
        card's ``prompt_flip_views`` mirror views; ``cache`` as in the constructor."""
        return cls(loaded.model, loaded.model_id, cache, flip_views=loaded.model_card.prompt_flip_views)

    # -- image -----------------------------------------------------------------
    def embed(self, image: np.ndarray, rgb: bool | None = None, *, with_mirrors: bool = True) -> Embedding:
        """The :class:`~napari_samsp.embedding.Embedding` of one 2D image (from the cache or the encoder).

        The predictor itself is not changed.

        Args:
            image: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA; any integer or float dtype.
            rgb: whether the last axis is colour (napari's ``layer.rgb``); None guesses.
            with_mirrors: also embed the mirror views ``flip_views`` asks for (False: leave them to
                the first decode that uses them, e.g. for planes decoded with ``flip_views=1``).

        Raises:
            InputImageError: empty, NaN, a stack (use ``transforms.split_planes``), or of a bad shape.
        """
        rgb_u8 = to_rgb_uint8(as_plane(image, rgb))
        prep = model_preprocessing(self.model)
        transform = InputTransform(self.model.img_size, (int(rgb_u8.shape[0]), int(rgb_u8.shape[1])), prep)
        key = image_key(rgb_u8)
        # Embeddings depend on the preprocessing too: keep those of other preprocessings apart.
        cache_id = self._cache_id if prep == LEGACY_PREPROCESSING else f"{self._cache_id}|{prep}"
        feats, cached = self._plane_features(cache_id, transform, rgb_u8, key)
        plane = rgb_u8.view()  # a read-only view: the caller's array (uint8 RGB passes through) stays writable
        plane.flags.writeable = False
        mirrors = tuple(self._plane_features(cache_id, transform, mirror(rgb_u8, rows, cols))[0]
                        for rows, cols in MIRROR_VIEWS[1 : self.flip_views if with_mirrors else 1])
        return Embedding(feats, transform, plane, key, cache_id, cached, mirrors)

    def _plane_features(self, cache_id: str, transform: InputTransform, rgb_u8: np.ndarray,
                        key: str | None = None) -> tuple[ImageFeatures, bool]:
        """Features of one uint8 RGB plane on this device, from the cache or the encoder; and
        whether they came from the cache."""
        key = key or image_key(rgb_u8)
        feats = self.cache.get(cache_id, key)
        cached = feats is not None
        if feats is None:
            feats = self.cache.put(cache_id, key, self._encode(transform, rgb_u8))
        return feats.to(self.device), cached

    def view_features(self, emb: Embedding, views: int) -> list[ImageFeatures]:
        """Features of the first ``views`` of :data:`~napari_samsp.embedding.MIRROR_VIEWS` of
        ``emb``'s plane: its own, then its mirrors (those ``emb`` lacks are embedded, cache first)."""
        feats = [emb.features, *emb.mirrors][:views]
        for rows, cols in MIRROR_VIEWS[len(feats) : views]:
            feats.append(self._plane_features(emb.cache_id, emb.transform, mirror(emb.rgb, rows, cols))[0])
        return feats

    def embedding_of(self, image: "np.ndarray | Embedding | None") -> Embedding:
        """``image`` as an Embedding: an Embedding as it is, an array embedded (:meth:`embed`),
        None the image of the last :meth:`set_image`."""
        if image is None:
            return self.embedding
        if isinstance(image, Embedding):
            return image
        return self.embed(image)

    def set_image(self, image: np.ndarray, rgb: bool | None = None) -> None:
        """Keep the embedding of one 2D image in the predictor (see :meth:`embed`; compatibility layer).

        :meth:`predict`, :meth:`predict_batch` and :meth:`decode_batch` without ``embedding``
        decode on it; :attr:`features`, :attr:`transform`, :attr:`image_rgb` read it.
        """
        emb = self.embed(image, rgb)
        self._embedding = emb
        self.last_embed_was_cached = emb.from_cache

    def _encode(self, transform: InputTransform, rgb_u8: np.ndarray) -> ImageFeatures:
        with torch.inference_mode():
            prepare = getattr(self.model, "prepare_image", None)
            if prepare is not None:  # a model family that fixes its own preprocessing (SamUNetPaper)
                return self.model.encode(prepare(rgb_u8).to(self.device))
            x = transform.image_to_tensor(rgb_u8)[None].to(self.device)
            return self.model.encode(self.model.normalize_pixels(x))

    def reset_image(self) -> None:
        self._embedding = None
        self.last_embed_was_cached = False

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    def _require_image(self) -> None:
        if self._embedding is None:
            raise SamspError("no image is set: call set_image first (or pass an embedding from embed())")

    @property
    def embedding(self) -> Embedding:
        """The embedding kept by :meth:`set_image`."""
        self._require_image()
        return self._embedding  # type: ignore[return-value]

    @property
    def features(self) -> ImageFeatures:
        """Features of the current image (batch 1, on the predictor's device)."""
        return self.embedding.features

    @property
    def transform(self) -> InputTransform:
        return self.embedding.transform

    @property
    def original_size(self) -> tuple[int, int]:
        return self.transform.original_size

    @property
    def image_rgb(self) -> np.ndarray:
        """The normalised (H, W, 3) uint8 plane the model sees (before resizing)."""
        return self.embedding.rgb

    @property
    def image_key(self) -> str:
        return self.embedding.key

    @property
    def low_res_size(self) -> int:
        """Side L of the decoder's low-resolution logits."""
        return 4 * self.model.prompt_encoder.image_embedding_size[0]

    # -- prompt validation -----------------------------------------------------
    def _points(self, emb: Embedding, coords, labels, batch: int | None) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        if coords is None:
            if labels is not None:
                raise PromptError("point_labels given without point_coords")
            return None, None
        pts = _as_float_array(coords, "point_coords")
        want = "(P, 2)" if batch is None else "(N, P, 2)"
        if batch is None and pts.ndim == 1 and pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != (2 if batch is None else 3) or pts.shape[-1] != 2 or (batch is not None and pts.shape[0] != batch):
            raise PromptError(f"point_coords must be {want} (x, y), got shape {pts.shape}")
        if labels is None:
            lab = np.ones(pts.shape[:-1], np.int64)
        else:
            lab_f = _as_float_array(labels, "point_labels")
            if lab_f.shape != pts.shape[:-1]:
                raise PromptError(f"point_labels must have shape {pts.shape[:-1]}, got {lab_f.shape}")
            if not np.isin(lab_f, (-1, 0, 1, 2, 3)).all():
                raise PromptError("point_labels must be 1 (foreground), 0 (background) or -1 (padding)")
            lab = lab_f.astype(np.int64)
        h, w = emb.original_size
        pts = pts.copy()
        pts[..., 0] = np.clip(pts[..., 0], 0, w - 1)
        pts[..., 1] = np.clip(pts[..., 1], 0, h - 1)
        return emb.transform.coords_to_input(pts), lab

    def _boxes(self, emb: Embedding, box, batch: int | None) -> np.ndarray | None:
        if box is None:
            return None
        b = _as_float_array(box, "box")
        if batch is None:
            if b.shape not in ((4,), (1, 4)):
                raise PromptError(f"box must be (4,) x0, y0, x1, y1, got shape {b.shape}")
            b = b.reshape(1, 4)
        elif b.shape != (batch, 4):
            raise PromptError(f"boxes must be (N, 4) x0, y0, x1, y1, got shape {b.shape}")
        h, w = emb.original_size
        x0, x1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
        y0, y1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
        b = np.stack([np.clip(x0, 0, w), np.clip(y0, 0, h), np.clip(x1, 0, w), np.clip(y1, 0, h)], axis=1)
        return emb.transform.boxes_to_input(b)

    def _mask_input(self, mask, batch: int | None) -> np.ndarray | None:
        if mask is None:
            return None
        m = _as_float_array(mask, "mask_input")
        side = self.low_res_size
        if batch is None:
            if m.shape in ((side, side), (1, side, side), (1, 1, side, side)):
                return m.reshape(1, 1, side, side)
            raise PromptError(f"mask_input must be (1, {side}, {side}) low-res logits, got shape {m.shape}")
        if m.shape == (batch, side, side):
            m = m[:, None]
        if m.shape != (batch, 1, side, side):
            raise PromptError(f"mask_input must be (N, 1, {side}, {side}) low-res logits, got shape {m.shape}")
        return m

    # -- decoding ----------------------------------------------------------------
    def _decode(self, emb: Embedding, pts, labels, boxes, masks, multimask: bool, n: int,
                views: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-frame prompts -> (n, M, L, L) low-res logits and (n, M) scores in ``emb``'s input frame,
        averaged over ``views`` (default: the predictor's ``flip_views``; each view decodes its mirrored
        prompts, and its logits are mirrored back before averaging)."""
        views = self.flip_views if views is None else check_flip_views(views)
        if views == 1:
            return self._decode_features(emb.features, pts, labels, boxes, masks, multimask, n)
        t = emb.transform
        mask_t = None if masks is None else torch.as_tensor(masks, dtype=torch.float32)
        logit_sum = score_sum = None
        for (rows, cols), feats in zip(MIRROR_VIEWS, self.view_features(emb, views)):
            lg, iou = self._decode_features(
                feats,
                None if pts is None else t.mirror_input_coords(pts, rows, cols),
                labels,
                None if boxes is None else t.mirror_input_boxes(boxes, rows, cols),
                None if mask_t is None else t.mirror_low_res(mask_t, rows, cols),
                multimask,
                n,
            )
            with torch.inference_mode():
                lg = t.mirror_low_res(lg.float(), rows, cols)
                logit_sum = lg if logit_sum is None else logit_sum + lg
                score_sum = iou.float() if score_sum is None else score_sum + iou.float()
        return logit_sum / views, score_sum / views

    def _decode_features(self, features: ImageFeatures, pts, labels, boxes, masks, multimask: bool,
                         n: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device

        def t(x, dtype=torch.float32):
            return None if x is None else torch.as_tensor(x, dtype=dtype, device=dev)

        with torch.inference_mode():
            return self.model.decode(
                features,
                point_coords=t(pts),
                point_labels=t(labels, torch.int64),
                boxes=t(boxes),
                mask_input=t(masks),
                multimask_output=multimask,
                num_prompts=n,
            )

    def _to_masks(self, low_res: torch.Tensor, chunk: int = 16, embedding: Embedding | None = None) -> np.ndarray:
        """(N, M, L, L) logits -> (N, M, H, W) bool on the original grid of ``embedding``
        (default: set_image's), in chunks to bound memory."""
        emb = self.embedding_of(embedding)
        h, w = emb.original_size
        out = np.empty((*low_res.shape[:2], h, w), dtype=bool)
        thr = float(getattr(self.model, "mask_threshold", 0.0))
        with torch.inference_mode():
            for i in range(0, low_res.shape[0], chunk):
                out[i : i + chunk] = (emb.transform.logits_to_original(low_res[i : i + chunk].float()) > thr).cpu().numpy()
        return out

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = False,
        *,
        embedding: Embedding | None = None,
        flip_views: int | None = None,
    ) -> Prediction:
        """Masks for one prompt set on ``embedding`` (default: the image of :meth:`set_image`).

        Args:
            point_coords: (P, 2) (x, y) on the original grid; points outside are clipped.
            point_labels: (P,) 1 foreground, 0 background (default: all foreground).
            box: (4,) x0, y0, x1, y1 on the original grid (corners are sorted and clipped).
            mask_input: (1, L, L) low-resolution logits of an earlier prediction.
            multimask_output: three candidate masks instead of one (see ``Prediction.best``).
                No prompt at all decodes the prompt-free mask.
            embedding: from :meth:`embed`; None decodes on set_image's.
            flip_views: mirror views for this decode (default: the predictor's ``flip_views``).
        """
        emb = self.embedding_of(embedding)
        pts, lab = self._points(emb, point_coords, point_labels, None)
        boxes = self._boxes(emb, box, None)
        masks = self._mask_input(mask_input, None)
        with limited_threads(self.decode_threads if self.device.type == "cpu" else None):
            logits, iou = self._decode(
                emb, None if pts is None else pts[None], None if lab is None else lab[None], boxes, masks, multimask_output,
                1, flip_views,
            )
        return Prediction(
            masks=self._to_masks(logits, embedding=emb)[0],
            logits=logits[0].float().cpu().numpy(),
            scores=iou[0].float().cpu().numpy(),
        )

    def _batch_prompts(self, emb: Embedding, boxes, point_coords, point_labels, mask_input):
        n = None
        for x in (boxes, point_coords, mask_input):
            if x is not None:
                n = int(np.shape(x)[0]) if np.ndim(x) > 0 else None
                break
        if n is None:
            raise PromptError("a batch needs boxes, point_coords or mask_input")
        pts, lab = self._points(emb, point_coords, point_labels, n)
        return n, pts, lab, self._boxes(emb, boxes, n), self._mask_input(mask_input, n)

    def _decode_chunks(self, emb: Embedding, n, pts, lab, bx, mk, chunk):
        """Yield (rows, low-res logits (n, 1, L, L), iou (n, 1)) chunk by chunk."""
        step = max(1, int(chunk))
        for i in range(0, n, step):
            sl = slice(i, min(n, i + step))
            lg, iou = self._decode(
                emb,
                None if pts is None else pts[sl],
                None if lab is None else lab[sl],
                None if bx is None else bx[sl],
                None if mk is None else mk[sl],
                False,
                sl.stop - sl.start,
            )
            yield sl, lg.float(), iou.float()

    def decode_batch(
        self,
        boxes: np.ndarray | None = None,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        chunk: int = 64,
        *,
        embedding: Embedding | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`predict_batch`, but the first output is (N, H, W) float32 logits on the original grid."""

        def full_logits(emb: Embedding, lg: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return emb.transform.logits_to_original(lg)[:, 0].cpu().numpy()

        prompts = (boxes, point_coords, point_labels, mask_input)
        return self._run_batch(self.embedding_of(embedding), prompts, chunk, np.float32, full_logits)

    def _run_batch(
        self,
        emb: Embedding,
        prompts: tuple[np.ndarray | None, ...],
        chunk: int,
        first_dtype: type,
        first_of: Callable[[Embedding, torch.Tensor], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode the (boxes, point_coords, point_labels, mask_input) batch chunk by chunk.

        Returns (N, H, W) ``first_dtype`` (``first_of(emb, logits)`` of each chunk's (n, 1, L, L) low-res
        logits), the low-res logits (N, 1, L, L) float32 and the scores (N,) float32.
        """
        n, pts, lab, bx, mk = self._batch_prompts(emb, *prompts)
        h, w = emb.original_size
        side = self.low_res_size
        first = np.zeros((n, h, w), dtype=first_dtype)
        low = np.zeros((n, 1, side, side), dtype=np.float32)
        scores = np.zeros((n,), dtype=np.float32)
        for sl, lg, iou in self._decode_chunks(emb, n, pts, lab, bx, mk, chunk):
            first[sl] = first_of(emb, lg)
            low[sl] = lg.cpu().numpy()
            scores[sl] = iou[:, 0].cpu().numpy()
        return first, low, scores

    def predict_batch(
        self,
        boxes: np.ndarray | None = None,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        chunk: int = 64,
        *,
        embedding: Embedding | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N prompt sets at once (instance decoding), one mask each, on ``embedding`` (default: set_image's).

        Args:
            boxes: (N, 4) x0, y0, x1, y1 on the original grid.
            point_coords: (N, P, 2) (x, y); label -1 marks padding points.
            point_labels: (N, P).
            mask_input: (N, 1, L, L) low-resolution logits.
            chunk: prompt sets decoded together (bounds memory).
            embedding: from :meth:`embed`; None decodes on set_image's.

        Returns:
            masks (N, H, W) bool, logits (N, 1, L, L) float32, scores (N,) float32.
        """
        prompts = (boxes, point_coords, point_labels, mask_input)
        return self._run_batch(self.embedding_of(embedding), prompts, chunk, bool,
                               lambda emb, lg: self._to_masks(lg, embedding=emb)[:, 0])
