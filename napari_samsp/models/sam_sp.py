"""SAM-SP (after arXiv 2408.12364): self-prompting passes over any SAM-like model.

Pass 0 decodes with no prompt at all. Pass k is prompted by pass k-1's own
output: a box around its foreground, its low-resolution logits as the dense
mask prompt and, optionally, one positive point at its most confident pixel.
Every pass's logits are returned so training can supervise all of them and let
the last (best) pass teach the earlier ones (self-distillation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .card import DEFAULT_NUM_PASSES
from .sam_model import ImageFeatures, SamModel


@dataclass
class PassOutput:
    """One self-prompting pass for a batch of B images.

    Attributes:
        logits: (B, 1, 4h, 4w) low-resolution mask logits.
        iou: (B, 1) the decoder's predicted IoU.
        boxes: (B, 4) the input-frame box that prompted this pass (None for pass 0).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    boxes: torch.Tensor | None = None


def boxes_from_logits(logits: torch.Tensor, img_size: int, threshold: float = 0.0) -> torch.Tensor:
    """Input-frame boxes (B, 4) around ``logits > threshold``; the whole image where empty.

    Args:
        logits: (B, 1, L, L) low-resolution logits.
        img_size: side S of the model input; one low-res pixel is S / L input pixels.
    """
    fg = logits[:, 0] > threshold  # (B, L, L)
    b, side = fg.shape[0], fg.shape[-1]
    scale = img_size / side
    rows = fg.any(dim=2)  # (B, L): which rows hold foreground
    cols = fg.any(dim=1)
    idx = torch.arange(side, device=logits.device).expand(b, side)
    big = torch.full_like(idx, side)
    y0 = torch.where(rows, idx, big).amin(dim=1)
    x0 = torch.where(cols, idx, big).amin(dim=1)
    y1 = torch.where(rows, idx, -1).amax(dim=1) + 1
    x1 = torch.where(cols, idx, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(logits.dtype) * scale
    empty = ~rows.any(dim=1)
    full = torch.tensor([0.0, 0.0, img_size, img_size], device=logits.device, dtype=logits.dtype)
    return torch.where(empty[:, None], full, boxes)


def points_from_logits(logits: torch.Tensor, img_size: int, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive point per image at the most confident pixel: (B, 1, 2) coords and (B, 1) labels.

    Images with no foreground get a padding point (label -1), which upstream's
    prompt encoder treats as "not a point".
    """
    b, _, side, _ = logits.shape
    flat = logits[:, 0].reshape(b, -1)
    best = flat.argmax(dim=1)
    scale = img_size / side
    ys = torch.div(best, side, rounding_mode="floor").to(logits.dtype)
    xs = (best % side).to(logits.dtype)
    coords = torch.stack([(xs + 0.5) * scale, (ys + 0.5) * scale], dim=1)[:, None, :]
    has_fg = flat.max(dim=1).values > threshold
    labels = torch.where(has_fg, 1, -1)[:, None].to(torch.int64)
    return coords, labels


class SamSP(nn.Module):
    """Self-prompting wrapper: K passes, each prompted by the one before.

    Args:
        model: a :class:`SamModel` (plain SAM or SAM-UNet).
        num_passes: K >= 1. K = 1 is plain prompt-free SAM (no self-prompting).
        use_points: add a positive point at the previous pass's most confident pixel.
        detach_prompts: stop gradients flowing from pass k into pass k-1 through
            its prompts (the box is never differentiable; this governs the dense
            mask prompt). Self-distillation already links the passes.
    """

    def __init__(self, model: SamModel, num_passes: int = DEFAULT_NUM_PASSES, use_points: bool = False, detach_prompts: bool = True) -> None:
        super().__init__()
        if num_passes < 1:
            raise ValueError(f"num_passes must be >= 1, got {num_passes}")
        self.model = model
        self.num_passes = num_passes
        self.use_points = use_points
        self.detach_prompts = detach_prompts

    def forward(self, images: torch.Tensor) -> list[PassOutput]:
        """(B, 3, S, S) normalised, padded images -> one :class:`PassOutput` per pass."""
        return self.run_passes(self.model.encode(images))

    def run_passes(self, features: ImageFeatures, num_passes: int | None = None) -> list[PassOutput]:
        """Self-prompting passes from precomputed features (e.g. the embedding cache)."""
        k = num_passes or self.num_passes
        b = len(features)
        logits, iou = self.model.decode(features, num_prompts=b)
        outputs = [PassOutput(logits, iou)]
        for _ in range(1, k):
            prev = outputs[-1].logits
            prompt_logits = prev.detach() if self.detach_prompts else prev
            boxes = boxes_from_logits(prev.detach(), self.model.img_size)
            coords = labels = None
            if self.use_points:
                coords, labels = points_from_logits(prev.detach(), self.model.img_size)
            logits, iou = self.model.decode(
                features, point_coords=coords, point_labels=labels, boxes=boxes, mask_input=prompt_logits
            )
            outputs.append(PassOutput(logits, iou, boxes))
        return outputs
