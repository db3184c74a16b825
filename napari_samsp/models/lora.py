"""Low-rank adapters (LoRA) for the image encoder's attention projections.

``apply_lora`` swaps each ``attn.qkv`` (and optionally ``attn.proj``) Linear of
the ViT blocks for a :class:`LoRALinear` that keeps the frozen base weight and
learns ``B @ A`` (rank r). ``merge_lora`` folds the update back into plain
``nn.Linear`` modules, so a merged model has upstream's exact state-dict layout
and no inference overhead.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * x @ A^T @ B^T``; ``B`` starts at zero so the wrap is an identity."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (self.dropout(x) @ self.lora_a.t()) @ self.lora_b.t()
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain Linear with the low-rank update folded into its weight."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged = merged.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


def apply_lora(encoder: nn.Module, rank: int = 4, alpha: float | None = None, targets: tuple[str, ...] = ("qkv",)) -> list[LoRALinear]:
    """Wrap ``attn.<target>`` Linears of every ViT block in ``encoder``; returns the adapters.

    Re-applying is a no-op for projections that are already wrapped.
    """
    adapters: list[LoRALinear] = []
    for block in getattr(encoder, "blocks", []):
        for name in targets:
            layer = getattr(block.attn, name)
            if isinstance(layer, LoRALinear):
                adapters.append(layer)
                continue
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"cannot apply LoRA to {type(layer).__name__} at attn.{name}")
            adapter = LoRALinear(layer, rank, alpha)
            setattr(block.attn, name, adapter)
            adapters.append(adapter)
    if not adapters:
        raise ValueError("no attention projections found to adapt: is this a SAM ViT encoder?")
    return adapters


def merge_lora(module: nn.Module) -> int:
    """Replace every :class:`LoRALinear` inside ``module`` by its merged Linear; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
            count += 1
        else:
            count += merge_lora(child)
    return count


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA factors inside ``module``."""
    return [p for m in module.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]
