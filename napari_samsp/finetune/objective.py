"""The training objective as one module, so DDP sees a single forward per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.sam_model import ImageFeatures, SamModel
from ..models.sam_sp import SamSP
from .losses import distillation_loss, iou_head_loss, segmentation_loss
from .prompts import corrective_clicks, simulate_prompts


@dataclass(frozen=True)
class ObjectiveConfig:
    """Loss weights and the self-prompting / prompt-simulation set-up."""

    num_passes: int = 2
    use_points: bool = False
    pass_weights: tuple[float, ...] | None = None  # default: 1 for every pass
    distill_weight: float = 1.0
    distill_kind: str = "kl"
    distill_temperature: float = 1.0
    prompt_weight: float = 1.0
    prompts_per_image: int = 4
    click_iterations: int = 1
    iou_weight: float = 1.0
    focal_alpha: float = 0.25


class SelfPromptObjective(nn.Module):
    """Segmentation loss on every self-prompting pass + self-distillation + simulated prompts.

    forward(images (B,3,S,S) in [0,255], labels (B,S,S), valid (B,S,S), features=None)
    -> dict of scalar losses with "total".
    """

    def __init__(self, model: SamModel, config: ObjectiveConfig, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.sp = SamSP(model, num_passes=config.num_passes, use_points=config.use_points)
        self.gen = torch.Generator().manual_seed(seed)

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        features: ImageFeatures | None = None,
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        model = self.model
        if features is None:
            features = model.encode(model.normalize_pixels(images))
        weight = valid[:, None].float()
        fg = (labels > 0)[:, None].float()
        passes = self.sp.run_passes(features)
        up = [model.upscale_logits(p.logits) for p in passes]
        pw = cfg.pass_weights or (1.0,) * len(passes)
        seg = sum(w * segmentation_loss(u, fg, weight, focal_alpha=cfg.focal_alpha) for w, u in zip(pw, up)) / sum(pw)
        iou = sum(iou_head_loss(p.iou, u, fg) for p, u in zip(passes, up)) / len(passes)
        losses = {"seg": seg, "iou": iou}
        total = seg + cfg.iou_weight * iou
        if cfg.distill_weight > 0 and len(up) > 1:
            distill = sum(
                distillation_loss(u, up[-1], cfg.distill_kind, cfg.distill_temperature, weight) for u in up[:-1]
            ) / (len(up) - 1)
            losses["distill"] = distill
            total = total + cfg.distill_weight * distill
        if cfg.prompt_weight > 0 and cfg.prompts_per_image > 0:
            prompted = self._prompted_loss(features, labels.cpu())
            if prompted is not None:
                losses["prompted"] = prompted
                total = total + cfg.prompt_weight * prompted
        losses["total"] = total
        return losses

    def _prompted_loss(self, features: ImageFeatures, labels: torch.Tensor) -> torch.Tensor | None:
        batch = simulate_prompts(labels, self.config.prompts_per_image, self.gen)
        if batch is None:
            return None
        dev = features.embeddings.device
        targets = batch.targets.to(dev)
        coords, plabels = batch.point_coords.to(dev), batch.point_labels.to(dev)
        boxes = batch.boxes.to(dev) if batch.boxes is not None else None
        index = batch.image_index.to(dev)
        logits, iou = self.model.decode(features, coords, plabels, boxes, image_index=index)
        up = self.model.upscale_logits(logits)
        loss = segmentation_loss(up, targets, focal_alpha=self.config.focal_alpha) + self.config.iou_weight * iou_head_loss(iou, up, targets)
        for _ in range(self.config.click_iterations):
            c, lab = corrective_clicks(up.detach().cpu(), targets.cpu(), self.gen)
            coords = torch.cat([coords, c.to(dev)], 1)
            plabels = torch.cat([plabels, lab.to(dev)], 1)
            logits, iou = self.model.decode(features, coords, plabels, boxes, mask_input=logits.detach(), image_index=index)
            up = self.model.upscale_logits(logits)
            loss = loss + segmentation_loss(up, targets, focal_alpha=self.config.focal_alpha) + self.config.iou_weight * iou_head_loss(iou, up, targets)
        return loss / (1 + self.config.click_iterations)
