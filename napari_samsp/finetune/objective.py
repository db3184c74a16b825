"""The training objective as one module, so DDP sees a single forward per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models.card import DEFAULT_NUM_PASSES
from ..models.sam_model import ImageFeatures, SamModel
from ..models.sam_sp import SamSP
from .losses import box_outside_loss, distillation_loss, iou_head_loss, segmentation_loss
from .prompts import corrective_clicks, simulate_interactive_prompts


@dataclass(frozen=True)
class ObjectiveConfig:
    """Loss weights and the self-prompting / prompt-simulation set-up."""

    num_passes: int = DEFAULT_NUM_PASSES
    use_points: bool = False
    pass_weights: tuple[float, ...] | None = None  # default: 1 for every pass
    distill_weight: float = 1.0
    distill_kind: str = "kl"
    distill_temperature: float = 1.0
    prompt_weight: float = 1.0
    prompts_per_image: int = 4
    # Corrective clicks after the first prompt (SAM used 8 + 2 mask-only; see docs/BENCHMARKS.md).
    click_iterations: int = 1
    # share of corrective clicks at the deepest error pixel (the NoC clicker) rather than a random one
    click_deepest_prob: float = 0.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    # weights of the first prompt kinds: point, box, point+box, propagate (box + shifted-mask logits)
    prompt_kind_probs: tuple[float, ...] = (0.35, 0.25, 0.2, 0.2)
    box_jitter: float = 0.1  # SAM: 10 % of the box side
    mask_prompt_drop: float = 0.2  # chance that a corrective iteration goes without the previous logits
    # propagation prompts: share moved onto background with an empty target (the object ended), share
    # with the plugin's positive point at the previous mask's centre, share without the logits
    absent_prob: float = 0.0
    propagate_point_prob: float = 0.0
    propagate_mask_drop: float = 0.0
    # box_outside_loss weight for prompt sets with a box. Off by default: measured on DSB nuclei
    # (training/probe_box_loss.py) it drives box prompts to empty masks (val box IoU 0.03 against
    # 0.59 without it, same draws); the segmentation loss already counts spill as false positives,
    # and the predictor confines box masks at inference (local_prompts.confine_mask).
    box_weight: float = 0.0
    box_margin: float = 0.1  # the box is grown by this fraction of its side before penalising
    prompt_free_weight: float = 1.0  # weight of the self-prompting + distillation (prompt-free) path


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
        # Tests set this to keep each iteration's logits / clicks in ``self.trace`` (holds the graph).
        self.record_trace = False
        self.trace: list[dict] = []
        self.last_box_outside: float | None = None

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
        total = cfg.prompt_free_weight * (seg + cfg.iou_weight * iou)
        if cfg.distill_weight > 0 and len(up) > 1:
            distill = sum(
                distillation_loss(u, up[-1], cfg.distill_kind, cfg.distill_temperature, weight) for u in up[:-1]
            ) / (len(up) - 1)
            losses["distill"] = distill
            total = total + cfg.prompt_free_weight * cfg.distill_weight * distill
        if cfg.prompt_weight > 0 and cfg.prompts_per_image > 0:
            prompted = self._prompted_loss(features, labels.cpu())
            if prompted is not None:
                losses["prompted"] = prompted
                if self.last_box_outside is not None:
                    losses["box_out"] = torch.tensor(self.last_box_outside)
                total = total + cfg.prompt_weight * prompted
        losses["total"] = total
        return losses

    def _prompted_loss(self, features: ImageFeatures, labels: torch.Tensor) -> torch.Tensor | None:
        """SAM-style interactive training: a first prompt, then corrective clicks from the model's own errors.

        Iteration 0 decodes the first prompts (:func:`simulate_interactive_prompts`); each of the
        ``click_iterations`` that follow adds one click per prompt set, drawn from the larger error
        region (false negatives -> positive, false positives -> negative) of the prediction just made
        (:func:`corrective_clicks`), and feeds that prediction's low-res logits back as the mask
        prompt (dropped with ``mask_prompt_drop``). Focal + Dice + IoU-head loss apply at every
        iteration, plus ``box_weight`` x :func:`box_outside_loss` for prompt sets with a box.
        The image encoder ran once for the batch; each iteration costs only prompt encoder + decoder.
        """
        cfg = self.config
        low_res = int(self.model.prompt_encoder.mask_input_size[0])
        batch = simulate_interactive_prompts(labels, cfg.prompts_per_image, self.gen, low_res,
                                             kind_probs=tuple(cfg.prompt_kind_probs), box_jitter=cfg.box_jitter,
                                             absent_prob=cfg.absent_prob, propagate_point_prob=cfg.propagate_point_prob,
                                             propagate_mask_drop=cfg.propagate_mask_drop)
        if batch is None:
            return None
        dev = features.embeddings.device
        targets = batch.targets.to(dev)
        coords, plabels = batch.point_coords.to(dev), batch.point_labels.to(dev)
        boxes, has_box = batch.boxes.to(dev), batch.has_box.to(dev)
        mask_in, has_mask = batch.mask_input.to(dev), batch.has_mask.to(dev)
        index = batch.image_index.to(dev)
        trace: list[dict] = []
        losses, outside = [], []
        up = logits = torch.empty(0)  # set by iteration 0, read by the corrective iterations after it
        for it in range(1 + cfg.click_iterations):
            if it > 0:
                c, lab = corrective_clicks(up.detach().cpu(), batch.targets, self.gen, cfg.click_deepest_prob)
                if self.record_trace:
                    trace[-1]["clicks"] = (c, lab)
                coords = torch.cat([coords, c.to(dev)], 1)
                plabels = torch.cat([plabels, lab.to(dev)], 1)
                mask_in = logits.detach()
                keep = torch.rand(len(index), generator=self.gen) >= cfg.mask_prompt_drop
                has_mask = keep.to(dev)
            logits, iou = self._decode_groups(features, coords, plabels, boxes, has_box, mask_in, has_mask, index)
            up = self.model.upscale_logits(logits)
            loss = segmentation_loss(up, targets, focal_alpha=cfg.focal_alpha) + cfg.iou_weight * iou_head_loss(iou, up, targets)
            if cfg.box_weight > 0 and bool(has_box.any()):
                rows = torch.nonzero(has_box).flatten()
                spill = box_outside_loss(up[rows], boxes[rows], targets[rows], margin=cfg.box_margin)
                outside.append(spill)
                loss = loss + cfg.box_weight * spill
            losses.append(loss)
            if self.record_trace:
                trace.append({"logits": up, "loss": loss, "has_box": has_box.clone(), "boxes": boxes, "targets": targets})
        if self.record_trace:
            self.trace = trace
        self.last_box_outside = float(torch.stack(outside).mean().detach()) if outside else None
        return torch.stack(losses).mean()

    def _decode_groups(self, features, coords, plabels, boxes, has_box, mask_in, has_mask, index):
        """Decode N prompt sets whose prompt types differ: one ``decode`` per (box?, mask?, points?) group.

        Rows without a box / mask / valid point go without that prompt, exactly as the predictor sends them.
        Returns (N, 1, L, L) logits and (N, 1) IoU predictions in row order.
        """
        has_pts = (plabels >= 0).any(1)
        key = has_box.long() * 4 + has_mask.long() * 2 + has_pts.long()
        logits = iou = None
        for k in torch.unique(key).tolist():
            rows = torch.nonzero(key == k).flatten()
            pts = (coords[rows], plabels[rows]) if k & 1 else (None, None)
            lg, io = self.model.decode(features, pts[0], pts[1], boxes[rows] if k & 4 else None,
                                       mask_input=mask_in[rows] if k & 2 else None, image_index=index[rows])
            if logits is None:
                logits = lg.new_zeros((len(key),) + lg.shape[1:])
                iou = io.new_zeros((len(key),) + io.shape[1:])
            logits = logits.index_copy(0, rows, lg)
            iou = iou.index_copy(0, rows, io)
        return logits, iou
