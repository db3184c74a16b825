"""Losses: segmentation (focal + Dice) on every pass, self-distillation, IoU-head regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, averaged. logits/target (N, 1, H, W); target in [0, 1]."""
    p = torch.sigmoid(logits)
    if weight is not None:
        p, target = p * weight, target * weight
    inter = (p * target).flatten(1).sum(1)
    denom = p.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), mean over valid pixels. Shapes (N, 1, H, W)."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    if weight is not None:
        return (loss * weight).sum() / weight.sum().clamp_min(1)
    return loss.mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    focal_weight: float = 20.0,
    focal_alpha: float = 0.25,
) -> torch.Tensor:
    """Focal + Dice as in SAM / SAM-UNet (focal weighted 20:1 as SAM does).

    ``focal_alpha`` < 0 disables the class weighting; 0.25 (the detection default)
    weighs foreground pixels a third of background ones, which biases large
    objects towards under-segmentation when training from scratch.
    """
    return focal_weight * focal_loss(logits, target, weight, alpha=focal_alpha) + dice_loss(logits, target, weight)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "kl", temperature: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The later pass teaches an earlier one; ``teacher`` is detached here.

    ``kl``: per-pixel Bernoulli KL(teacher || student) at temperature T (scaled by T^2).
    ``dice``: soft Dice between the two probability maps.
    """
    teacher = teacher.detach()
    if kind == "dice":
        return dice_loss(student, torch.sigmoid(teacher), weight)
    if kind != "kl":
        raise ValueError(f"unknown distillation kind {kind!r}; use 'kl' or 'dice'")
    t = temperature
    q = torch.sigmoid(teacher / t)
    log_p = F.logsigmoid(student / t)
    log_1p = F.logsigmoid(-student / t)
    log_q = F.logsigmoid(teacher / t)
    log_1q = F.logsigmoid(-teacher / t)
    kl = q * (log_q - log_p) + (1 - q) * (log_1q - log_1p)
    if weight is not None:
        kl = (kl * weight).sum() / weight.sum().clamp_min(1)
    else:
        kl = kl.mean()
    return kl * t * t


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard IoU per mask (N, 1, H, W) -> (N,), the IoU head's regression target."""
    pred = logits > 0
    tgt = target > 0.5
    inter = (pred & tgt).flatten(1).sum(1).float()
    union = (pred | tgt).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def iou_head_loss(iou_pred: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the decoder's predicted IoU (N, 1) and the actual IoU of its mask."""
    return F.mse_loss(iou_pred[:, 0], mask_iou(logits.detach(), target))


def grown_boxes(boxes: torch.Tensor, margin: float, min_margin: float = 2.0) -> torch.Tensor:
    """(N, 4) x0, y0, x1, y1 boxes grown on each side by ``margin`` x side length (at least ``min_margin`` px)."""
    side = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)
    grow = (side * margin).clamp_min(min_margin).repeat(1, 2)
    return boxes + grow * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device)


def outside_box_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) True where a pixel centre (x + 0.5, y + 0.5) lies outside its (N, 4) box."""
    h, w = size
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5
    b = boxes[:, :, None, None]
    inside_x = (xs[None, None, None, :] >= b[:, 0:1]) & (xs[None, None, None, :] <= b[:, 2:3])
    inside_y = (ys[None, None, :, None] >= b[:, 1:2]) & (ys[None, None, :, None] <= b[:, 3:4])
    return ~(inside_x & inside_y)


def box_outside_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    target: torch.Tensor | None = None,
    margin: float = 0.1,
    threshold: float = 0.25,
) -> torch.Tensor:
    """Penalty for foreground predicted outside a box prompt, per prompt set, averaged.

    For each mask: the sum of ``relu(p - threshold)`` over pixels outside the box grown by
    ``margin`` (and not part of ``target``, so a box drawn too tight never fights the object),
    divided by the same sum over the whole mask (detached): the soft fraction of the predicted
    object lying outside its box. It is exactly 0 when no pixel outside the box has a
    probability above ``threshold`` and its gradient only lowers those pixels.

    Args:
        logits: (N, 1, H, W) mask logits in the frame of ``boxes``.
        boxes: (N, 4) x0, y0, x1, y1 in pixels.
        target: optional (N, 1, H, W) object masks excluded from the penalty.
    """
    q = torch.relu(torch.sigmoid(logits.float()) - threshold)  # float32: bf16 boxes would be off by pixels
    out = outside_box_mask(grown_boxes(boxes.float(), margin), logits.shape[-2:])
    if target is not None:
        out = out & (target <= 0.5)
    spill = (q * out).flatten(1).sum(1)
    total = q.detach().flatten(1).sum(1).clamp_min(1.0)
    return (spill / total).mean()
