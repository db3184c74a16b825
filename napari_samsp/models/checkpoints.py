"""Checkpoint I/O: official SAM ``.pth`` files, SAM-UNet training checkpoints and our own
``.safetensors`` + model card format, behind one entry point, :func:`load_model`.

Safety: ``.pth`` files are pickles, and unpickling can run arbitrary code. Every
``.pth`` is first read with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers. A file that needs more (a SAM-UNet training
checkpoint with pickled optimizer or ``argparse`` objects) is refused unless the
caller passes ``trust=True``. Our own format is safetensors: no code, ever.

Formats:

* official SAM: a flat ``{name: tensor}`` dict (``image_encoder.*``,
  ``prompt_encoder.*``, ``mask_decoder.*``); loaded with a strict key and shape check.
  MedSAM and micro-sam's plain exports are this format too.
* wrapped SAM state dicts: the same tensors under ``model_state`` (micro-sam,
  optionally beside ``decoder_state``, its instance-segmentation decoder, which is
  ignored and reported), ``model``, ``state_dict`` or ``model_state_dict``, with
  wrapper prefixes (``module.``, ``sam.``, ``model.``, ``_orig_mod.``) stripped;
  loaded strictly like official SAM.
* SAM-UNet repository (Hhankyangg/sam-unet): ``{'model': state_dict, 'optimizer': <Adam>}``;
  recognised by its wrapper prefixes and loaded strictly into the paper's architecture
  (``sam_unet_paper.py``). Other training checkpoints (``{'model'|'state_dict': ...}``) are
  loaded non-strictly into a SAM-UNet config of ours, reporting what matched.
* ours (``samsp-1``): ``.safetensors`` whose metadata holds the model card as JSON
  under ``samsp_card``, plus the same card as a readable ``<stem>.json`` sidecar.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import logging
import os
import pickle
import pickletools
import re
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import SamspError, WeightsError
from ..io import fsync_dir
from ..transforms import (
    SAM_PREPROCESSING,
    model_preprocessing,
    set_model_preprocessing,
)
from ..tempfiles import sweep_stale, temp_prefix
from . import validate
from .card import CARD_FORMAT, ModelCard
from .build import MODEL_CONFIGS, SamConfig, build_model
from .lora import LoRALinear, merge_lora
from .sam_model import SamModel

__all__ = [
    "CARD_FORMAT",
    "DEFAULT_WEIGHTS",
    "LoadedModel",
    "load_model",
    "load_official_sam",
    "load_safetensors_model",
    "load_samunet_checkpoint",
    "make_card",
    "read_card",
    "resolve_device",
    "save_model",
]

logger = logging.getLogger(__name__)

CARD_KEY = "samsp_card"

# Looked up at call time (not bound as a default argument) so tests and packagers can redirect it.
DEFAULT_WEIGHTS: Path = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"

# Used when no default weights ship yet: small enough to run anywhere.
DEFAULT_RANDOM_CONFIG = "tiny"

# The SAM-UNet parts that official SAM has no weights for. Every fusion ends in a
# zero-initialised projection, so leaving them at initialisation reproduces SAM.
UNET_BRANCH_PREFIXES = ("cnn_branch.", "encoder_fusion.", "decoder_fusion.", "vit_reduce.")

_OFFICIAL_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}

# Globals that a plain tensor checkpoint references; anything else means pickled Python objects.
_TENSOR_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.slice")

# The three parts of a SAM state dict, and prefixes that training wrappers put in front of them
# (DataParallel/DDP ``module.``, micro-sam/torch_em ``sam.``, Lightning ``model.``, torch.compile ``_orig_mod.``).
_SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_WRAPPER_PREFIXES = ("module.", "sam.", "model.", "_orig_mod.")
# Keys under which projects wrap a SAM state dict; ``model_state`` is micro-sam's (torch_em's).
_WRAPPER_KEYS = ("model_state", "model", "state_dict", "model_state_dict")


@dataclass
class LoadedModel:
    """A model ready for inference, with what is known about its weights.

    Attributes:
        model: the model, in eval mode, on the requested device.
        card: the model card (for files that carry none, one describing their origin).
        model_id: stable identifier of the weights, used to key embedding caches.
        source: where the weights came from (a file path, or ``random:<config>``).
        is_random: True when the weights are a random initialisation, not trained.
    """

    model: SamModel
    card: dict[str, Any]
    model_id: str
    source: str
    is_random: bool

    @property
    def model_card(self) -> ModelCard:
        """The typed view of :attr:`card` (defaults filled; see :mod:`napari_samsp.models.card`)."""
        return ModelCard.from_dict(self.card)


# --------------------------------------------------------------------------- devices


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto`` / ``cpu`` / ``cuda[:N]`` / ``mps`` into an available ``torch.device``.

    ``auto`` picks CUDA, then MPS, then CPU. An explicit accelerator that is not
    available raises :class:`SamspError` rather than silently falling back, so a
    user who asked for a GPU learns that they are not getting one.
    """
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SamspError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SamspError(f"device {spec!r} requested but CUDA is not available here; use --device auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SamspError(f"device {spec!r} requested but only {count} CUDA device(s) exist (cuda:0..cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise SamspError(f"device {spec!r} requested but Apple MPS is not available here; use --device auto or cpu")
        return device
    raise SamspError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


# --------------------------------------------------------------------------- small helpers


def _one_line(text: str, limit: int = 160) -> str:
    """First line of an exception message, without ANSI codes, shortened."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text)).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _short_list(items: Iterable[str], limit: int = 4) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_file(path: str | os.PathLike[str]) -> Path:
    """The path as a ``Path`` if it is a non-empty regular file, else a :class:`WeightsError`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"weights file not found: {p}")
    if not p.is_file():
        raise WeightsError(f"not a weights file (a directory or special file): {p}")
    if p.stat().st_size == 0:
        raise WeightsError(f"weights file is empty (0 bytes): {p}; re-download or re-save it")
    return p


def _sniff(path: Path) -> str:
    """``zip`` (torch.save), ``pickle`` (legacy torch.save / raw pickle), ``safetensors`` or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """First 16 hex characters of the file's SHA-256, read in chunks (files can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def _get_config(name: str) -> SamConfig:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise WeightsError(f"unknown model config {name!r}; known: {', '.join(MODEL_CONFIGS)}") from None


def _with_img_size(config: SamConfig, img_size: int) -> SamConfig:
    if img_size <= 0 or img_size % config.patch_size:
        raise WeightsError(
            f"img_size {img_size} is not a positive multiple of the patch size {config.patch_size} of {config.name!r}"
        )
    # The prompt encoder's embedding grid follows from img_size (config.embedding_size).
    return config if img_size == config.img_size else dataclasses.replace(config, img_size=img_size)


# --------------------------------------------------------------------------- reading .pth safely


def _pickle_globals(path: Path) -> list[str]:
    """Globals a pickle-based file references, found by parsing opcodes (nothing is executed).

    Only used to word the error message: the refusal itself comes from
    ``weights_only=True`` failing.
    """
    data: bytes | None = None
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # a torn end record ("spans multiple disks"): scan the bytes as a pickle
        is_zip = False
    if is_zip:
        getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
        try:
            if getter is not None:
                return list(getter(path))
            with zipfile.ZipFile(path) as archive:  # older torch: scan the archive's data.pkl below
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        except Exception:  # noqa: BLE001 - a damaged archive raises Runtime/Value/EOF/BadZip/StopIteration...: no names
            return []
    found: list[str] = []
    with io.BytesIO(data) if data is not None else open(path, "rb") as f:
        # Legacy torch.save writes several pickles back to back (magic, protocol,
        # sys info, data, storage keys) before raw storage bytes.
        for _ in range(6):
            # An approximate trace of pushed values (strings, or None for anything
            # else) and of the memo, enough to name STACK_GLOBAL's module and name.
            pushed: list[str | None] = []
            memo: dict[int, str | None] = {}
            try:
                for op, arg, _pos in pickletools.genops(f):
                    name = op.name
                    if name in ("GLOBAL", "INST"):
                        found.append(str(arg).replace(" ", "."))
                        pushed.append(None)
                    elif name == "STACK_GLOBAL":
                        module, qualname = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                        found.append(f"{module}.{qualname}" if module and qualname else "(unresolved global)")
                        pushed.append(None)
                    elif name == "MEMOIZE":
                        memo[len(memo)] = pushed[-1] if pushed else None
                    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[int(arg)] = pushed[-1] if pushed else None
                    elif name in ("GET", "BINGET", "LONG_BINGET"):
                        pushed.append(memo.get(int(arg)))
                    elif isinstance(arg, str) and ("UNICODE" in name or name.endswith("STRING")):
                        pushed.append(str(arg))
                    elif op.stack_after:
                        pushed.append(None)
            except (ValueError, OSError):  # end of the pickles, or not a pickle at all (genops: ValueError)
                break
    return [g for g in found if not g.startswith(_TENSOR_GLOBAL_PREFIXES)]


def _corrupt(path: Path, exc: BaseException) -> WeightsError:
    text = str(exc)
    # torch wraps every weights_only unpickling failure in a long advice text;
    # only the unpickler's own complaint says anything about this file.
    inner = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, flags=re.S)
    detail = inner.group(1) if inner else text.split(". ")[0]
    return WeightsError(
        f"cannot read {path}: not a valid PyTorch checkpoint (corrupt or truncated?): "
        f"{type(exc).__name__}: {_one_line(detail) or 'no details'}"
    )


def _official_refusal(path: Path, names: list[str]) -> str:
    what = f" ({_short_list(names, 3)})" if names else ""
    return (
        f"{path}: this file contains pickled Python objects{what}; official SAM, MedSAM and micro-sam exports do not "
        "(training checkpoints with optimizer or config objects do) — refusing to load "
        "(use --trust only for files you trust)"
    )


def _samunet_refusal(path: Path, names: list[str]) -> str:
    what = _short_list(names, 3) if names else "e.g. optimizer state"
    return (
        f"{path} holds pickled Python objects ({what}) besides the weights; unpickling can run arbitrary code, "
        "so it is refused: pass trust=True (--trust) only for files from a source you trust"
    )


def _torch_load(path: Path, trust: bool, refusal: Callable[[Path, list[str]], str]) -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only when ``trust`` is set."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch reports both "forbidden global" and "garbage bytes" this way; a
        # static scan of the opcodes tells which, for the message only.
        refused = exc
    except Exception as exc:  # zip/EOF/format errors: the file is damaged, not unsafe
        raise _corrupt(path, exc) from exc
    names = _pickle_globals(path)
    if not trust:
        if names:
            raise WeightsError(refusal(path, names)) from None
        raise _corrupt(path, refused) from None
    logger.warning(
        "%s: loading with --trust: this file is unpickled, and unpickling can run ANY code it holds on this "
        "computer, with your permissions; stop now (Ctrl+C) unless you trust where the file came from", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling runs the file's own code, which may raise anything
        raise _corrupt(path, exc) from exc


# --------------------------------------------------------------------------- state dicts


def _is_flat_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _training_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model weights inside a training checkpoint (or a plain state dict), ``module.`` stripped."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    # DataParallel / DDP training saves every key under "module.".
    state = {
        (k[len("module."):] if k.startswith("module.") else k): v
        for k, v in obj.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    if not state:
        raise WeightsError(f"{path} holds no tensors under 'model', 'state_dict' or at the top level")
    return state


def _official_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_flat_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("model", "state_dict")):
        raise WeightsError(
            f"{path} is a training checkpoint (keys: {_short_list(map(str, obj))}), not an official SAM "
            "state dict; load it with load_samunet_checkpoint or load_model"
        )
    raise WeightsError(f"{path} does not hold a flat dict of tensors as official SAM checkpoints do")


def _strip_wrapper_prefixes(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove prefixes that every key shares (``module.``, ``sam.``, ...), repeatedly; returns (state, removed)."""
    out = dict(state)
    removed = ""
    while out:
        pre = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in out)), None)
        if pre is None:
            break
        out = {k[len(pre):]: v for k, v in out.items()}
        removed += pre
    return out, removed


def _count_tensors(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, Mapping):
        return sum(_count_tensors(v) for v in obj.values())
    return 0


def _sam_state_in(obj: Any) -> tuple[dict[str, torch.Tensor], str, str] | None:
    """A SAM state dict inside a loaded ``.pth`` object: (state, detected format, what was ignored).

    Recognises flat state dicts (official SAM, MedSAM, micro-sam's plain export),
    micro-sam's ``{'model_state': ..., 'decoder_state': ...}`` and state dicts
    wrapped under ``model`` / ``state_dict`` / ``model_state_dict``, with shared
    wrapper prefixes stripped. Returns None when ``obj`` is something else (a
    wrapped state dict that is more than SAM, e.g. a SAM-UNet training checkpoint).
    """
    if isinstance(obj, torch.nn.Module):  # only reachable with trust: a pickled module
        obj = obj.state_dict()
    if _is_flat_state(obj):
        state, removed = _strip_wrapper_prefixes(obj)
        fmt = "plain SAM state dict (official SAM / MedSAM / micro-sam export)"
        return state, fmt + (f", prefix {removed!r} stripped" if removed else ""), ""
    if not isinstance(obj, Mapping):
        return None
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, torch.nn.Module):
            inner = inner.state_dict()
        if not _is_flat_state(inner):
            continue
        state, removed = _strip_wrapper_prefixes(inner)
        micro = key == "model_state"
        if not micro and not all(k.startswith(_SAM_PARTS) for k in state):
            return None  # more than SAM under 'model': left to the SAM-UNet loader
        fmt = "micro-sam checkpoint ('model_state'" + (" + 'decoder_state')" if "decoder_state" in obj else ")") if micro \
            else f"SAM state dict wrapped under {key!r}"
        others = []
        for name in (str(k) for k in obj if k != key):
            n = _count_tensors(obj[name])
            what = " (micro-sam's instance-segmentation decoder)" if name == "decoder_state" else ""
            others.append(f"{name}{what}" + (f": {n} tensors" if n else ""))
        return state, fmt + (f", prefix {removed!r} stripped" if removed else ""), "; ".join(others)
    return None


def _infer_base_config(state: Mapping[str, torch.Tensor]) -> SamConfig:
    """Which built-in (non-UNet) architecture a state dict belongs to, from tensor shapes."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        raise WeightsError(
            f"not a SAM checkpoint: no image_encoder.patch_embed.proj.weight among its {len(state)} keys "
            f"({_short_list(sorted(state), 3)})"
        )
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    neck = state.get("image_encoder.neck.0.weight")
    rel = state.get("image_encoder.blocks.0.attn.rel_pos_h")
    matches = [
        cfg
        for cfg in MODEL_CONFIGS.values()
        if cfg.unet is None
        and cfg.encoder_embed_dim == dim
        and cfg.encoder_depth == depth
        and cfg.patch_size == patch
        and (neck is None or cfg.prompt_embed_dim == neck.shape[0])
        and (rel is None or cfg.encoder_embed_dim // cfg.encoder_num_heads == rel.shape[-1])
    ]
    if not matches:
        known = ", ".join(n for n, c in MODEL_CONFIGS.items() if c.unet is None)
        raise WeightsError(
            f"cannot tell the architecture: encoder width {dim}, {depth} blocks, patch {patch} match none of "
            f"{known}; pass config_name"
        )
    return matches[0]


def _native_img_size(state: Mapping[str, torch.Tensor], config: SamConfig) -> int | None:
    """The input size the checkpoint was trained at, from its positional-embedding grid."""
    pos = state.get("image_encoder.pos_embed")
    if pos is None or pos.ndim != 4 or pos.shape[-1] != config.encoder_embed_dim or pos.shape[1] != pos.shape[2]:
        return None
    return int(pos.shape[1]) * config.patch_size


def _resize_positional(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], src_grid: int, dst_grid: int
) -> dict[str, torch.Tensor]:
    """Interpolate absolute and relative position tables from one token grid to another.

    Only the global-attention blocks' relative tables depend on the grid
    (windowed blocks use the window size), hence the ``2 * grid - 1`` test.
    """
    out = dict(state)
    pos = state.get("image_encoder.pos_embed")
    want = expected.get("image_encoder.pos_embed")
    if pos is not None and want is not None and pos.shape[-1] == want.shape[-1] and pos.shape != want.shape:
        grid = pos.permute(0, 3, 1, 2).float()  # (1, C, H, W) for interpolate
        grid = F.interpolate(
            grid, size=tuple(want.shape[1:3]), mode="bicubic", align_corners=False, antialias=dst_grid < src_grid
        )
        out["image_encoder.pos_embed"] = grid.permute(0, 2, 3, 1).to(pos.dtype).contiguous()
    for key, table in state.items():
        if not key.endswith((".attn.rel_pos_h", ".attn.rel_pos_w")) or key not in expected:
            continue
        target = expected[key].shape
        if table.shape[0] == 2 * src_grid - 1 and target[0] == 2 * dst_grid - 1 and table.shape[1:] == target[1:]:
            line = table.t().unsqueeze(0).float()  # (1, head_dim, L): interpolate along relative distance
            line = F.interpolate(line, size=target[0], mode="linear", align_corners=False)
            out[key] = line[0].t().to(table.dtype).contiguous()
    return out


def _compare(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], allow_missing: tuple[str, ...] = ()
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing, unexpected, mis-shaped as (key, file shape, model shape)), each sorted."""
    missing = sorted(k for k in expected if k not in state and not k.startswith(allow_missing))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    )
    return missing, unexpected, mismatched


def _misfit_parts(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    file_name: Callable[[str], str] = str,
    missing_note: str = "",
) -> list[str]:
    """The readable pieces of a key/shape misfit: mis-shaped, missing and unexpected keys, a few named each."""
    parts = []
    if mismatched:
        shown = [f"{file_name(k)} file {list(a)} vs model {list(b)}" for k, a, b in mismatched]
        parts.append(f"{len(mismatched)} mis-shaped keys ({_short_list(shown, 3)})")
    if missing:
        parts.append(f"{len(missing)} missing keys ({missing_note}{_short_list(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_short_list([file_name(k) for k in unexpected])})")
    return parts


def _describe_misfit(
    path: Path,
    config: SamConfig,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    state: Mapping[str, torch.Tensor],
) -> str:
    parts = _misfit_parts(missing, unexpected, mismatched)
    hint = ""
    try:
        guess = _infer_base_config(state).name
        if guess != config.name and f"samunet_{guess}" != config.name:
            hint = f"; the file looks like a {guess!r} checkpoint"
    except WeightsError:
        pass
    return f"weights in {path} do not fit model {config.name!r} ({config.img_size} px): " + "; ".join(parts) + hint


def _sized_model(
    state: dict[str, torch.Tensor], base: SamConfig, img_size: int | None
) -> tuple[SamConfig, SamModel, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A random model of ``base`` at ``img_size``, its state dict, and ``state`` with resized positional embeddings.

    Without an explicit ``img_size`` the checkpoint's own resolution is kept: no silent resampling.
    """
    native = _native_img_size(state, base)
    config = _with_img_size(base, img_size or native or base.img_size)
    model = build_model(config)
    expected = model.state_dict()
    if native is not None and native != config.img_size:
        state = _resize_positional(state, expected, native // config.patch_size, config.embedding_size)
    return config, model, expected, state


def _model_from_state(
    state: dict[str, torch.Tensor], config_name: str | None, img_size: int | None, path: Path
) -> SamModel:
    """Build the config and load ``state`` strictly (SAM-UNet branch keys may be missing)."""
    if config_name is None:
        base = _infer_base_config(state)
        # A SAM-UNet of ours saved as a flat dict: keep its branch rather than reject it.
        if any(k.startswith(UNET_BRANCH_PREFIXES) for k in state) and f"samunet_{base.name}" in MODEL_CONFIGS:
            base = MODEL_CONFIGS[f"samunet_{base.name}"]
    else:
        base = _get_config(config_name)
    config, model, expected, state = _sized_model(state, base, img_size)
    allow = UNET_BRANCH_PREFIXES if config.unet is not None else ()
    missing, unexpected, mismatched = _compare(expected, state, allow)
    if missing or unexpected or mismatched:
        raise WeightsError(_describe_misfit(path, config, missing, unexpected, mismatched, state))
    model.load_state_dict(state, strict=config.unet is None)
    return model.eval()


def _model_from_training(
    obj: Any, config_name: str, img_size: int | None, path: Path
) -> SamModel:
    """Load a training checkpoint's weights non-strictly, reporting what matched."""
    state = _training_state(obj, path)
    if _is_samunet_repo_state(state):  # the paper's own layout: its own architecture, strictly
        return _samunet_repo_model(state, path)
    base = _get_config(config_name)
    config, model, expected, state = _sized_model(state, base, img_size)
    missing, unexpected, mismatched = _compare(expected, state)
    matched = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    if not matched:
        raise WeightsError(_describe_misfit(path, config, missing, unexpected, mismatched, state) + "; nothing matched")
    model.load_state_dict(matched, strict=False)
    report = (
        f"loaded {len(matched)} of {len(expected)} tensors of {config.name!r} from {path}; "
        f"{len(missing)} missing (left at initialisation: {_short_list(missing, 3) or '-'}), "
        f"{len(unexpected)} unexpected (ignored: {_short_list(unexpected, 3) or '-'}), "
        f"{len(mismatched)} mis-shaped (ignored: {_short_list([m[0] for m in mismatched], 3) or '-'})"
    )
    logger.info(report)
    if missing or unexpected or mismatched:
        warnings.warn(report, stacklevel=3)
    return model.eval()


# --------------------------------------------------------------------------- public loaders


def load_official_sam(
    path: str | os.PathLike[str], config_name: str | None = None, img_size: int | None = None
) -> SamModel:
    """Load an official SAM checkpoint (``sam_vit_b_01ec64.pth`` etc.) with a strict check.

    Args:
        path: the ``.pth`` file: a flat dict of tensors.
        config_name: a built-in config; None infers vit_b/l/h (or one of ours) from
            tensor shapes. A SAM-UNet config (``samunet_vit_b``) takes the SAM
            weights and leaves its zero-initialised branch as built.
        img_size: input size to build for; None keeps the checkpoint's. Position
            tables are interpolated when it differs.

    Raises:
        WeightsError: missing/empty/corrupt file, pickled objects (refused), or
            weights of another architecture (missing, unexpected, mis-shaped keys).
    """
    p = _check_file(path)
    obj = _torch_load(p, trust=False, refusal=_official_refusal)
    model = _model_from_state(_official_state(obj, p), config_name, img_size, p)
    return set_model_preprocessing(model, SAM_PREPROCESSING)


def load_samunet_checkpoint(
    path: str | os.PathLike[str],
    config_name: str = "samunet_vit_b",
    trust: bool = False,
    img_size: int | None = None,
) -> SamModel:
    """Load a SAM-UNet repository checkpoint (``{'model': ..., 'optimizer': ..., 'epoch': ...}``).

    The weights are read with ``weights_only=True`` first; files that also pickle
    Python objects (optimizer, ``argparse.Namespace``) need ``trust=True``.
    A checkpoint of the paper's repository (``image_encoder.sam_img_encoder.*`` ...) is
    rebuilt as :class:`~napari_samsp.models.sam_unet_paper.SamUNetPaper` and loaded
    strictly (``config_name`` and ``img_size`` are then read from the file). Other
    files load non-strictly: keys that fit are loaded, the rest is reported with
    ``warnings.warn``; ``module.`` prefixes (DataParallel) are stripped.
    """
    p = _check_file(path)
    obj = _torch_load(p, trust=trust, refusal=_samunet_refusal)
    return set_model_preprocessing(_model_from_training(obj, config_name, img_size, p), SAM_PREPROCESSING)


# --------------------------------------------------------------------------- SAM-UNet repository (the paper's code)

_SAMUNET_REPO_MARKERS = ("image_encoder.sam_img_encoder.", "mask_decoder.med_token.", "adapters_in.")


def _is_samunet_repo_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True for the state dict of the paper repository's ``SAM_UNET`` (Hhankyangg/sam-unet)."""
    return any(k.startswith(_SAMUNET_REPO_MARKERS) for k in state)


def _samunet_repo_resnet(state: Mapping[str, torch.Tensor], path: Path) -> int:
    """ResNet depth of a repository checkpoint, from its stage layout and block type."""
    from .sam_unet_paper import RESNETS

    blocks = tuple(len({k.split(".")[2] for k in state if k.startswith(f"resnet.stage{i}.")}) for i in range(1, 5))
    bottleneck = "resnet.stage1.0.conv3.weight" in state
    for depth, (_, layout, is_bottleneck) in RESNETS.items():
        if layout == blocks and is_bottleneck == bottleneck:
            return depth
    kind = "bottleneck" if bottleneck else "basic"
    raise WeightsError(
        f"{path}: SAM-UNet repository checkpoint with an unknown ResNet branch ({kind} blocks per stage {list(blocks)}); "
        f"known: ResNet-{', ResNet-'.join(map(str, RESNETS))}"
    )


def _samunet_repo_config(state: Mapping[str, torch.Tensor], depth: int, path: Path) -> SamConfig:
    """The config of a repository state dict, read from tensor shapes.

    The repository builds vit_b at 256 px (``samunet_paper_r34`` / ``_r50``); other
    ViT sizes are read from the patch embedding (width, patch), the positional grid
    (input size), the relative-position tables (head width; global blocks have
    ``2 * grid - 1`` rows, windowed ones ``2 * window - 1``) and the decoder's layers.
    """
    vit = "image_encoder.sam_img_encoder."
    w = state.get(vit + "patch_embed.proj.weight")
    pos = state.get(vit + "pos_embed")
    rel = state.get(vit + "blocks.0.attn.rel_pos_h")
    neck = state.get(vit + "neck.0.weight")
    if w is None or w.ndim != 4 or pos is None or pos.ndim != 4 or rel is None or rel.ndim != 2 or neck is None:
        raise WeightsError(
            f"{path}: SAM-UNet repository checkpoint (ResNet-{depth}) without a readable ViT "
            f"(needs {vit}patch_embed.proj.weight, pos_embed, blocks.0.attn.rel_pos_h and neck.0.weight)"
        )
    dim, patch, grid = int(w.shape[0]), int(w.shape[-1]), int(pos.shape[1])
    rows = {
        int(k.split(".")[3]): int(v.shape[0])
        for k, v in state.items()
        if k.startswith(vit + "blocks.") and k.endswith(".attn.rel_pos_h")
    }
    global_idx = tuple(i for i in sorted(rows) if rows[i] == 2 * grid - 1)
    windowed = {rows[i] for i in rows if i not in global_idx}
    base = MODEL_CONFIGS[f"samunet_paper_r{depth}" if depth in (34, 50) else "samunet_paper_r50"]
    decoder = "mask_decoder.sam_mask_decoder.transformer.layers."
    lin1 = state.get(decoder + "0.mlp.lin1.weight")
    down = state.get("prompt_encoder.sam_prompt_encoder.mask_downscaling.0.weight")
    config = dataclasses.replace(
        base,
        name=f"samunet_paper_r{depth}",
        img_size=grid * patch,
        patch_size=patch,
        encoder_embed_dim=dim,
        encoder_depth=len(rows),
        encoder_num_heads=max(1, dim // int(rel.shape[1])),
        encoder_global_attn_indexes=global_idx,
        window_size=(min(windowed) + 1) // 2 if windowed else base.window_size,
        prompt_embed_dim=int(neck.shape[0]),
        decoder_depth=len({k[len(decoder):].split(".")[0] for k in state if k.startswith(decoder)}),
        decoder_mlp_dim=int(lin1.shape[0]) if lin1 is not None else base.decoder_mlp_dim,
        mask_in_chans=4 * int(down.shape[0]) if down is not None else base.mask_in_chans,
        resnet=depth,
    )
    if config != dataclasses.replace(base, name=config.name, resnet=depth):
        config = dataclasses.replace(
            config, name=f"samunet_paper_r{depth}_d{dim}x{len(rows)}_{config.img_size}px",
            description=f"SAM-UNet as published, custom size: ViT {dim}x{len(rows)} at {config.img_size} px + ResNet-{depth}",
        )
    if len(global_idx) != 4:
        raise WeightsError(
            f"{path}: SAM-UNet repository checkpoint (ResNet-{depth}) has {len(global_idx)} global-attention blocks "
            f"({list(global_idx)}); the architecture needs 4, one per ResNet stage"
        )
    return config


def _samunet_repo_model(state: Mapping[str, torch.Tensor], path: Path) -> SamModel:
    """Build the paper's SAM-UNet for a repository state dict and load it strictly.

    The ResNet depth (34 or 50, also 18/101) and the ViT come from tensor shapes
    (:func:`_samunet_repo_config`). Every tensor must be used: missing, unexpected
    and mis-shaped keys are listed by their names in the file.
    """
    from .sam_unet_paper import repo_key_to_ours

    depth = _samunet_repo_resnet(state, path)
    config = _samunet_repo_config(state, depth, path)
    try:
        model = build_model(config)
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: cannot build {config.name!r} for this SAM-UNet checkpoint: {_one_line(str(exc))}") from None
    expected = model.state_dict()
    theirs = {repo_key_to_ours(k): k for k in state}
    mapped = {ours: state[k] for ours, k in theirs.items()}
    missing, unexpected, mismatched = _compare(expected, mapped)
    if missing or unexpected or mismatched:
        # mis-shaped and unexpected keys by their names in the file; missing ones only have ours
        parts = _misfit_parts(missing, unexpected, mismatched, file_name=theirs.__getitem__, missing_note="our names: ")
        raise WeightsError(
            f"{path}: SAM-UNet repository checkpoint (detected ResNet-{depth}, ViT width {config.encoder_embed_dim}, "
            f"{config.img_size} px) does not fit {config.name!r}: " + "; ".join(parts)
        )
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _loaded_samunet_repo(state: Mapping[str, torch.Tensor], path: Path) -> LoadedModel:
    """:func:`_samunet_repo_model` with a card that records origin and preprocessing."""
    from .sam_unet_paper import PREPROCESSING

    model = _samunet_repo_model(state, path)
    model_id = _file_digest(path)
    created = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    card = make_card(
        model.config,
        {
            "version": model_id,
            "created": created,
            "origin": f"SAM-UNet repository checkpoint (Hhankyangg/sam-unet), ResNet-{model.config.resnet}",
            "preprocessing": PREPROCESSING,
            "num_passes": 1,
        },
    )
    return LoadedModel(model, card, model_id, str(path), False)


def make_card(config: SamConfig, card: ModelCard | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete ``samsp-1`` model card: ``card``'s fields, defaults for the rest.

    ``format``, ``config`` and ``input_size`` always describe ``config``; unknown
    keys are kept; a missing ``version`` and ``created`` are stamped. The other
    defaults are :class:`~napari_samsp.models.card.ModelCard`'s (e.g. ``preprocessing``
    ``"samsp-v1"``, which every card written before the field existed describes). The
    result is JSON-normalised (tuples become lists), so it compares equal to what
    :func:`read_card` returns.
    """
    given = card.to_dict() if isinstance(card, ModelCard) else dict(card or {})
    typed = ModelCard.from_dict({**given, "format": CARD_FORMAT, "config": config.to_dict(),
                                 "input_size": config.img_size})
    stamped = dataclasses.replace(
        typed,
        version=typed.version or uuid.uuid4().hex,
        created=typed.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return stamped.to_dict()


def _temp_beside(target: Path) -> Path:
    # Same directory, so os.replace is an atomic rename on the same filesystem.
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp creates 0600; model files are shared (and shipped in the wheel), so
    # give them the usual permissions the process's umask allows.
    os.chmod(name, _file_mode())
    return Path(name)


def _file_mode() -> int:
    """0666 minus the process umask: the mode a plain ``open(..., "w")`` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_model(model: SamModel, path: str | os.PathLike[str], card: ModelCard | Mapping[str, Any]) -> Path:
    """Write ``model`` as ``.safetensors`` with its card, atomically; returns the path.

    The card (completed by :func:`make_card`) is stored in the safetensors
    metadata under ``samsp_card`` and as a ``<stem>.json`` sidecar. LoRA adapters
    are merged into a copy first, so the file has the plain layout; the caller's
    model is never modified. Both files are written to temporary files beside the
    target, fsynced and renamed into place: a failure leaves any previous file intact.

    The card's ``preprocessing`` is the model's own (``transforms.model_preprocessing``,
    set by the loader from the parent's card), so a fine-tuned child inherits it.

    Raises:
        WeightsError: the path does not end in ``.safetensors``, or writing failed.
        ValueError: the card names a preprocessing other than the model's.
    """
    target = Path(path).expanduser()
    if target.suffix != ".safetensors":
        raise WeightsError(f"model files must end in .safetensors, got {target}")
    if isinstance(card, ModelCard):
        card = card.to_dict()
    prep = model_preprocessing(model)
    if card.get("preprocessing") not in (None, prep):
        raise ValueError(
            f"the card says preprocessing {card.get('preprocessing')!r} but the model was prepared with {prep!r}"
        )
    full_card = make_card(model.config, {**card, "preprocessing": prep})
    to_save = model
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        to_save = copy.deepcopy(model)
        merge_lora(to_save)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in to_save.state_dict().items()}
    metadata = {"format": "pt", CARD_KEY: json.dumps(full_card, sort_keys=True)}
    sidecar = target.with_suffix(".json")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target.parent)  # temporary files of killed earlier saves
    temps: list[Path] = []
    try:
        tmp_weights = _temp_beside(target)
        temps.append(tmp_weights)
        save_file(tensors, tmp_weights, metadata=metadata)
        os.chmod(tmp_weights, _file_mode())
        with open(tmp_weights, "r+b") as f:
            os.fsync(f.fileno())
        tmp_card = _temp_beside(sidecar)
        temps.append(tmp_card)
        with open(tmp_card, "w", encoding="utf-8") as f:
            json.dump(full_card, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_weights, target)
        os.replace(tmp_card, sidecar)
    except OSError as exc:
        raise WeightsError(
            f"could not save the model to {target}: {_one_line(str(exc))} (any existing file there is unchanged)"
        ) from exc
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    return target


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of a ``.safetensors`` file, without loading its tensors.

    Reads the safetensors metadata; falls back to the ``<stem>.json`` sidecar when
    the metadata has no card (or the file is unreadable). A ``.json`` path is read directly.
    """
    p = Path(path).expanduser()
    sidecar = p if p.suffix == ".json" else p.with_suffix(".json")
    damage: str | None = None
    if p.suffix != ".json" and p.is_file():
        try:
            with safe_open(p, framework="pt") as f:
                meta = f.metadata() or {}
            if CARD_KEY in meta:
                return json.loads(meta[CARD_KEY])
        except (SafetensorError, OSError, ValueError) as exc:
            # The sidecar may still describe the file; if not, say the file is damaged.
            damage = _one_line(str(exc))
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"unreadable model card {sidecar}: {_one_line(str(exc))}") from exc
    if not p.exists():
        raise WeightsError(f"weights file not found: {p}")
    if damage is not None:
        raise WeightsError(f"cannot read {p}: not a valid safetensors file (corrupt or truncated?): {damage}")
    raise WeightsError(f"no model card in {p} (nor a sidecar {sidecar.name}): not a napari-samsp model file")


def load_safetensors_model(path: str | os.PathLike[str]) -> tuple[SamModel, dict[str, Any]]:
    """Load one of our ``.safetensors`` models: rebuild its config from the card, load strictly."""
    p = _check_file(path)
    card = read_card(p)
    if card.get("format") != CARD_FORMAT:
        raise WeightsError(f"{p}: unsupported model card format {card.get('format')!r} (expected {CARD_FORMAT!r})")
    try:
        config = SamConfig.from_dict(card["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{p}: the model card's config is invalid: {_one_line(str(exc))}") from None
    try:
        validate.check_card(p, card, config, validate.header_shapes(p))  # before any tensor is read or built
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {p}: not a valid safetensors file (corrupt or truncated?): {_one_line(str(exc))}") from exc
    try:
        typed = ModelCard.from_dict(card)  # the typed view every reader uses must exist (training_data entries, ...)
    except ValueError as exc:
        raise WeightsError(f"{p}: the model card is invalid: {_one_line(str(exc))}; the file was not loaded") from None
    try:
        state = load_file(p)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {p}: not a valid safetensors file (corrupt or truncated?): {_one_line(str(exc))}") from exc
    model = build_model(config)
    missing, unexpected, mismatched = _compare(model.state_dict(), state)
    if missing or unexpected or mismatched:
        raise WeightsError(_describe_misfit(p, config, missing, unexpected, mismatched, state))
    model.load_state_dict(state, strict=True)
    set_model_preprocessing(model, typed.preprocessing)  # a known one: ModelCard checked it
    return model.eval(), card


# --------------------------------------------------------------------------- the entry point


def _random_model(config: SamConfig, note: str) -> LoadedModel:
    model_id = f"random-{config.name}-seed0"
    # Seeded inside a forked RNG: deterministic weights without resetting the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config)
    card = make_card(config, {"version": model_id, "random": True, "note": note})
    return LoadedModel(model.eval(), card, model_id, f"random:{config.name}", True)


def _load_path(path: Path, trust: bool) -> LoadedModel:
    p = _check_file(path)
    if p.suffix == ".safetensors" or _sniff(p) == "safetensors":
        model, card = load_safetensors_model(p)
        typed = ModelCard.from_dict(card)
        model_id = str(typed.version or _file_digest(p))
        return LoadedModel(model, card, model_id, str(p), typed.random)
    obj = _torch_load(p, trust=trust, refusal=_official_refusal)
    extra: dict[str, Any] = {}
    found = _sam_state_in(obj)
    if found is not None:
        state, origin, ignored = found
        try:
            model = _model_from_state(state, None, None, p)
        except WeightsError as exc:
            raise WeightsError(f"{origin}: {exc}") from None
        if ignored:
            extra["ignored"] = ignored
            report = f"{p}: loaded the SAM part of a {origin}; ignored {ignored}"
            logger.info(report)
            warnings.warn(report, stacklevel=3)
    else:
        state = _training_state(obj, p)
        if _is_samunet_repo_state(state):
            return _loaded_samunet_repo(state, p)
        try:
            base = _infer_base_config(state).name
        except WeightsError:
            base = "vit_b"
        name = f"samunet_{base}" if f"samunet_{base}" in MODEL_CONFIGS else "samunet_vit_b"
        model = _model_from_training(state, name, None, p)
        origin = "SAM-UNet training checkpoint"
    model_id = _file_digest(p)
    created = datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    # Foreign weights were trained with upstream SAM's preprocessing, and not to self-prompt:
    # their automatic mode is the point grid (everything).
    set_model_preprocessing(model, SAM_PREPROCESSING)
    card = make_card(
        model.config,
        {"version": model_id, "origin": origin, "created": created, "preprocessing": SAM_PREPROCESSING,
         "mode": "everything", **extra},
    )
    return LoadedModel(model, card, model_id, str(p), False)


def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\")) or Path(text).suffix in (".safetensors", ".pth", ".pt", ".bin")


def load_model(
    name_or_path: str | os.PathLike[str] | None = None, device: str = "auto", trust: bool = False
) -> LoadedModel:
    """The one way the CLI and the plugin get a model.

    Args:
        name_or_path: None or ``"default"`` for the bundled default (a random ``tiny`` model, flagged
            ``is_random``, while none ships); a built-in config name (our small
            configs build randomly; official ones need their file); or a file:
            ``.safetensors`` (ours), official SAM ``.pth``, or a SAM-UNet training
            checkpoint (needs ``trust`` when it pickles Python objects). A string
            naming a built-in config wins over a same-named file.
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
        trust: allow full unpickling of ``.pth`` files; only for trusted sources.

    Returns:
        A :class:`LoadedModel` in eval mode on the device. ``model_id`` is the
        card's version for our files, the file's SHA-256 (16 hex) for others, and
        ``random-<config>-seed0`` for random models.
    """
    dev = resolve_device(device)
    if name_or_path == "default":
        name_or_path = None  # the name `samsp models` lists for the embedded weights (wins over a file, like config names)
    if name_or_path is None:
        default = DEFAULT_WEIGHTS
        if default.is_file():
            loaded = _load_path(default, trust=False)
        else:
            loaded = _random_model(
                _get_config(DEFAULT_RANDOM_CONFIG),
                f"no default weights at {default.name} yet: randomly initialised, predictions are meaningless",
            )
    elif isinstance(name_or_path, str) and name_or_path in MODEL_CONFIGS:
        config = MODEL_CONFIGS[name_or_path]
        if config.official:
            hint = _OFFICIAL_FILES.get(name_or_path.removeprefix("samunet_"))
            raise WeightsError(
                f"{name_or_path} needs the official checkpoint file: pass its path" + (f" ({hint})" if hint else "")
            )
        loaded = _random_model(config, "randomly initialised: predictions are meaningless until trained")
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists() and isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
            raise WeightsError(
                f"unknown model {name_or_path!r}: not a file and not one of: {', '.join(MODEL_CONFIGS)}"
            )
        loaded = _load_path(path, trust)
    validate.finish_loaded(loaded)  # refuses non-finite weights; the cache key's weights digest
    loaded.model.to(dev).eval()
    return loaded
