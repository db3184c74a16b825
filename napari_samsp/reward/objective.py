"""What self-improvement optimises and draws, as values for the one training loop (``finetune.loop.train``).

* :class:`PseudoExample`: an unlabeled image with its chosen (best) and rejected (worst) candidate mask and
  a confidence weight. Both masks travel packed in ``labels`` (bit 0 chosen, bit 1 rejected), so every
  geometric augmentation of the loop moves them together with the image.
* :class:`MixedSampler`: each batch is ``n_human`` corrected examples, then ``n_pseudo`` pseudo-labelled ones.
* :class:`SelfImproveObjective`: on the corrected rows the usual :class:`SelfPromptObjective`; on the pseudo rows
  a confidence-weighted segmentation loss towards the chosen mask on every pass plus :func:`preference_loss`,
  a pixel-wise DPO term against a frozen reference model.

With per-pixel Bernoulli likelihoods, ``log p(chosen) - log p(rejected)`` on a pixel where the two masks differ
is ``s * z`` (``z`` the logit, ``s = +1`` where chosen says foreground, ``-1`` where it says background), so the
preference term is ``mean over differing pixels of -log sigmoid(beta * s * (z_theta - z_ref))``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DataLayoutError
from ..finetune.data import Example
from ..finetune.losses import segmentation_loss
from ..finetune.objective import ObjectiveConfig, SelfPromptObjective
from ..models.sam_model import ImageFeatures, SamModel
from ..models.sam_sp import SamSP

__all__ = ["MixedSampler", "PseudoExample", "SelfImproveObjective", "preference_loss"]

PSEUDO_DOMAIN = "pseudo"


def preference_loss(logits: torch.Tensor, ref_logits: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                    valid: torch.Tensor | None = None, beta: float = 1.0) -> torch.Tensor:
    """Pixel-wise DPO on Bernoulli likelihoods, on the pixels where chosen and rejected differ.

    Args:
        logits, ref_logits: (B, 1, H, W) of the trained and the frozen reference model.
        chosen, rejected: (B, 1, H, W) binary masks. valid: (B, 1, H, W) bool or None.

    Returns:
        Mean over images that have differing pixels of the mean over those pixels of
        ``-log sigmoid(beta * [(log p(c) - log p_ref(c)) - (log p(r) - log p_ref(r))])``; 0 when none differ.
    """
    c = chosen > 0.5
    diff = c != (rejected > 0.5)
    if valid is not None:
        diff = diff & valid.bool()
    if not diff.any():
        return logits.sum() * 0.0
    lp = F.logsigmoid(logits)
    lq = F.logsigmoid(-logits)
    rp = F.logsigmoid(ref_logits.detach())
    rq = F.logsigmoid(-ref_logits.detach())
    logp_c = torch.where(c, lp, lq) - torch.where(c, rp, rq)
    logp_r = torch.where(c, lq, lp) - torch.where(c, rq, rp)
    per_pixel = -F.logsigmoid(beta * (logp_c - logp_r))
    d = diff.float()
    count = d.flatten(1).sum(1)
    per_image = (per_pixel * d).flatten(1).sum(1) / count.clamp_min(1)
    has = count > 0
    return per_image[has].mean()


@dataclass
class PseudoExample(Example):
    """A pseudo-labelled example: ``labels`` (H, W) int32 = chosen | rejected << 1; ``weight`` its confidence."""

    weight: float = 1.0

    @classmethod
    def from_masks(cls, image: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, weight: float,
                   stem: str) -> "PseudoExample":
        """``image`` (H, W, 3) uint8; ``chosen``, ``rejected`` (H, W) bool on the same grid."""
        labels = chosen.astype(np.int32) | (rejected.astype(np.int32) << 1)
        return cls(image, labels, PSEUDO_DOMAIN, stem, float(weight))


def unpack_pseudo(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S) packed labels -> chosen, rejected as (B, 1, S, S) float masks."""
    return (labels & 1).gt(0)[:, None].float(), (labels & 2).gt(0)[:, None].float()


class MixedSampler:
    """Draws batches of ``n_human`` corrected examples followed by ``n_pseudo`` pseudo-labelled ones.

    The loop draws ``n_human + n_pseudo`` examples per step (its ``batch_size``), so position ``i`` of a batch
    is human for ``i < n_human``; each draw is uniform within its group.
    """

    def __init__(self, examples: Sequence[Example], seed: int, n_human: int, n_pseudo: int) -> None:
        self.human = [e for e in examples if not isinstance(e, PseudoExample)]
        self.pseudo = [e for e in examples if isinstance(e, PseudoExample)]
        if not self.human or n_human < 1:
            raise DataLayoutError("self-improvement needs corrected examples in every batch")
        if n_pseudo and not self.pseudo:
            raise DataLayoutError("the mixed sampler was asked for pseudo-labelled examples but has none")
        self.n_human, self.n_pseudo = int(n_human), int(n_pseudo)
        self.rng = random.Random(seed)
        self.drawn = 0

    @classmethod
    def factory(cls, n_human: int, n_pseudo: int):
        """A ``sampler(examples, seed)`` for ``finetune.loop.train``."""
        return lambda examples, seed: cls(examples, seed, n_human, n_pseudo)

    def draw(self) -> Example:
        position = self.drawn % (self.n_human + self.n_pseudo)
        self.drawn += 1
        return self.rng.choice(self.human if position < self.n_human else self.pseudo)


class SelfImproveObjective(nn.Module):
    """Corrected masks + confidence-weighted pseudo-labels + pixel-wise DPO against a frozen reference.

    forward(images (B,3,S,S) in [0,255] or None, labels (B,S,S), valid (B,S,S), features=None, examples=...)
    -> dict of scalar losses: ``human`` (the :class:`SelfPromptObjective` total on the corrected rows),
    ``pseudo`` and ``pref`` (on the :class:`PseudoExample` rows, when the batch has any) and ``total``
    = ``human_weight * human + pseudo_weight * pseudo + pref_weight * pref``.
    """

    wants_examples = True  # finetune.loop.train passes the drawn examples (which rows are pseudo, their weights)

    def __init__(self, model: SamModel, reference: SamModel, human: ObjectiveConfig, seed: int = 0, *,
                 beta: float = 1.0, human_weight: float = 1.0, pseudo_weight: float = 1.0,
                 pref_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.reference = reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.human = SelfPromptObjective(model, human, seed=seed)
        self.sp = SamSP(model, num_passes=human.num_passes)
        self.ref_sp = SamSP(self.reference, num_passes=human.num_passes)
        self.beta, self.human_weight, self.pseudo_weight, self.pref_weight = beta, human_weight, pseudo_weight, pref_weight

    def train(self, mode: bool = True) -> "SelfImproveObjective":
        super().train(mode)
        self.reference.eval()  # the reference is frozen, in every respect
        return self

    def forward(self, images: torch.Tensor | None, labels: torch.Tensor, valid: torch.Tensor,
                features: ImageFeatures | None = None,
                examples: Sequence[Example] | None = None) -> dict[str, torch.Tensor]:
        if examples is None or len(examples) != len(labels):
            raise ValueError("SelfImproveObjective needs the batch's examples (finetune.loop.train passes them)")
        model = self.model
        if features is None:
            features = model.encode(model.normalize_pixels(images))
        is_pseudo = [isinstance(e, PseudoExample) for e in examples]
        dev = labels.device
        human = torch.tensor([i for i, p in enumerate(is_pseudo) if not p], dtype=torch.long, device=dev)
        pseudo = torch.tensor([i for i, p in enumerate(is_pseudo) if p], dtype=torch.long, device=dev)
        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=dev)
        if len(human):
            losses["human"] = self.human(None, labels[human], valid[human], features=features.select(human))["total"]
            total = total + self.human_weight * losses["human"]
        if len(pseudo):
            weights = torch.tensor([examples[i].weight for i in pseudo.tolist()], device=dev)
            ref_features = None if images is None else self._reference_features(images[pseudo])
            losses["pseudo"], losses["pref"] = self._pseudo_losses(
                features.select(pseudo), ref_features, labels[pseudo], valid[pseudo], weights)
            total = total + self.pseudo_weight * losses["pseudo"] + self.pref_weight * losses["pref"]
        losses["total"] = total
        return losses

    @torch.no_grad()
    def _reference_features(self, images: torch.Tensor) -> ImageFeatures:
        """The reference's own embeddings (only needed when the trained model's encoder trains too)."""
        return self.reference.encode(self.reference.normalize_pixels(images))

    def _pseudo_losses(self, features: ImageFeatures, ref_features: ImageFeatures | None, labels: torch.Tensor,
                       valid: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted focal + Dice towards ``chosen`` on every pass, and the preference term on the last pass.

        ``features``/``ref_features`` hold N rows; ``labels`` (N, S, S) packed; ``valid`` (N, S, S); ``weights`` (N,).
        """
        model = self.model
        chosen, rejected = unpack_pseudo(labels)
        valid = valid[:, None]
        up = [model.upscale_logits(p.logits) for p in self.sp.run_passes(features)]
        n = len(weights)
        seg = sum(
            sum(weights[i] * segmentation_loss(u[i : i + 1], chosen[i : i + 1], valid[i : i + 1].float()) for i in range(n))
            for u in up
        ) / (len(up) * weights.sum().clamp_min(1e-6))
        with torch.no_grad():
            ref_logits = self.ref_sp.run_passes(features if ref_features is None else ref_features)[-1].logits
        pref = preference_loss(up[-1], model.upscale_logits(ref_logits), chosen, rejected, valid, self.beta)
        return seg, pref
