"""Checks on weights and model cards before a model is built or used (issue 13).

* :func:`check_card`: every field of a ``samsp-1`` card within sane bounds and consistent with
  the tensors in the file's header, before any tensor is read or any module is built: a card
  that claims ``img_size`` 131072 or an encoder depth of 20000 is refused in milliseconds.
* :func:`check_finite`: refuse weights holding NaN or infinite values, naming the tensors.
* :func:`weights_digest`: a hash of the tensors' bytes, so the embedding cache is keyed on
  what the weights are, not only on what the card says they are.
* :func:`finish_loaded`: the last two on a freshly loaded model (one call in ``load_model``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .build import SamConfig, build_model
from .card import CARD_MODES, DEFAULT_MODE

__all__ = ["BOUNDS", "check_card", "check_finite", "finish_loaded", "header_shapes", "weights_digest"]

# (min, max) of every integer field of a config; the maxima are far above any real SAM
# (vit_h: dim 1280, depth 32) yet keep one image's activations within a workstation's memory.
BOUNDS: dict[str, tuple[int, int]] = {
    "img_size": (16, 4096),
    "patch_size": (1, 64),
    "encoder_embed_dim": (8, 4096),
    "encoder_depth": (1, 128),
    "encoder_num_heads": (1, 64),
    "window_size": (0, 256),
    "prompt_embed_dim": (8, 4096),
    "decoder_mlp_dim": (1, 16384),
    "decoder_depth": (1, 32),
    "decoder_num_heads": (1, 64),
    "iou_head_hidden_dim": (1, 4096),
    "mask_in_chans": (4, 1024),
}
MAX_GRID = 256  # image-embedding grid side (img_size / patch_size): global attention is quadratic in its square
MAX_PASSES = 16


def _refuse(path: Path | str, what: str) -> WeightsError:
    return WeightsError(f"{path}: the model card is invalid: {what}; the file was not loaded (was it edited by hand?)")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config(path: Path | str, config: SamConfig) -> None:
    for name, (lo, hi) in BOUNDS.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        if not _int(value) or not lo <= value <= hi:
            raise _refuse(path, f"config {name} = {value!r} is outside {lo}..{hi}")
    if config.img_size % config.patch_size:
        raise _refuse(path, f"img_size {config.img_size} is not a multiple of patch_size {config.patch_size}")
    if config.embedding_size > MAX_GRID:
        raise _refuse(path, f"img_size / patch_size = {config.embedding_size} exceeds {MAX_GRID}")
    for dim, heads in (("encoder_embed_dim", "encoder_num_heads"), ("prompt_embed_dim", "decoder_num_heads")):
        if getattr(config, dim) % getattr(config, heads):
            raise _refuse(path, f"{dim} {getattr(config, dim)} is not divisible by {heads} {getattr(config, heads)}")
    idx = config.encoder_global_attn_indexes
    if not all(_int(i) and 0 <= i < config.encoder_depth for i in idx):
        raise _refuse(path, f"encoder_global_attn_indexes {list(idx)} must lie in 0..{config.encoder_depth - 1}")
    if config.unet is not None:
        widths = config.unet.widths
        if not 1 <= len(widths) <= 8 or not all(_int(w) and 1 <= w <= 4096 for w in widths):
            raise _refuse(path, f"unet widths {list(widths)} must be 1 to 8 integers in 1..4096")
        if not _int(config.unet.blocks_per_stage) or not 1 <= config.unet.blocks_per_stage <= 16:
            raise _refuse(path, f"unet blocks_per_stage {config.unet.blocks_per_stage!r} is outside 1..16")


def check_card(path: Path | str, card: Mapping[str, Any], config: SamConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a card whose fields are out of bounds or disagree with the file's tensors.

    Args:
        path: the weights file, for messages.
        card: the model card as read from the file.
        config: ``SamConfig.from_dict(card["config"])``.
        shapes: tensor name -> shape, from the file's header (no tensor data read).

    Raises:
        WeightsError: one line naming the field (or the first mismatching tensors).
    """
    _check_config(path, config)
    mode = card.get("mode", DEFAULT_MODE)
    if mode not in CARD_MODES:
        raise _refuse(path, f"mode {mode!r} is not one of {', '.join(CARD_MODES)}")
    passes = card.get("num_passes")
    if passes is not None and (not _int(passes) or not 1 <= passes <= MAX_PASSES):
        raise _refuse(path, f"num_passes {passes!r} is outside 1..{MAX_PASSES}")
    size = card.get("input_size")
    if size is not None and size != config.img_size:
        raise _refuse(path, f"input_size {size!r} differs from the config's img_size {config.img_size}")
    with torch.device("meta"):  # the architecture and the file's tensors without memory: names and shapes only
        expected = build_model(config).state_dict()
        state = {k: torch.empty(tuple(v)) for k, v in shapes.items()}
    # the loader's own wording for misfits (imported here: checkpoints imports this module)
    from .checkpoints import _compare, _describe_misfit

    missing, unexpected, mismatched = _compare(expected, state)
    if missing or unexpected or mismatched:
        raise WeightsError(_describe_misfit(Path(path), config, missing, unexpected, mismatched, state))


def check_finite(source: Path | str, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights with NaN or infinite values.

    Raises:
        WeightsError: ``<source>: N tensors hold NaN or infinite values (a, b, ...)``.
    """
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad) - 4} more)" if len(bad) > 4 else "")
        raise WeightsError(
            f"{source}: {len(bad)} weight tensor{'s hold' if len(bad) != 1 else ' holds'} NaN or infinite values "
            f"({shown}); the model would give meaningless masks, so it was not loaded (use an earlier version)"
        )


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """BLAKE2b (16 hex) over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(state):
        t = state[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def finish_loaded(loaded: Any) -> Any:
    """Refuse non-finite weights and attach ``model.weights_digest`` (read by the Predictor's cache key)."""
    state = loaded.model.state_dict()
    check_finite(loaded.source, state)
    loaded.model.weights_digest = weights_digest(state)
    return loaded


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, without reading tensor data."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
