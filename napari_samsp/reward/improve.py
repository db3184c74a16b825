"""The self-improvement round (after CSR): preference fine-tuning on unlabeled images, anchored by corrected masks.

Per round, on a copy of the current model:

1. every unlabeled image is segmented into a candidate pool (``candidates.py``) and each
   candidate gets the CSR reward; **chosen** = best, **rejected** = worst of the pool;
2. the model trains on a mix of
   (a) the human-corrected masks of the store (the usual objective: every pass, self-distillation,
       simulated prompts), always;
   (b) the chosen masks as pseudo-labels, each weighted by its calibrated expected Dice;
   (c) a pixel-wise DPO preference term against a frozen reference (the model at the start of the
       round), on the pixels where chosen and rejected differ. With per-pixel Bernoulli likelihoods,
       ``log p(chosen) - log p(rejected)`` on such a pixel is ``s * z`` (``z`` the logit, ``s = +1`` where
       chosen says foreground, ``-1`` where it says background), so the term is
       ``mean over differing pixels of -log sigmoid(beta * s * (z_theta - z_ref))``;
3. validation Dice (the store's validation split, or a given labelled set) decides: a round that
   does not improve it is undone (the previous model is kept) and the iteration stops.

Only the prompt encoder and mask decoder train (the encoder is frozen), so image embeddings are
computed once and reused across steps and rounds. The base model is never modified.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataLayoutError
from ..finetune.data import Example, prepare_sample
from ..finetune.job import load_training_data
from ..finetune.loop import TrainingCancelled, configure_trainable, validate
from ..finetune.losses import segmentation_loss
from ..finetune.objective import ObjectiveConfig, SelfPromptObjective
from ..models.checkpoints import LoadedModel
from ..models.sam_model import ImageFeatures, SamModel
from ..models.sam_sp import SamSP
from ..predictor import EmbeddingCache, Predictor
from ..transforms import model_preprocessing
from .calibration import RewardCalibrator, RewardConfig
from .candidates import prepare_image
from .ranking import fit_calibrator, score_image

log = logging.getLogger(__name__)

__all__ = ["ImproveConfig", "ImprovementReport", "RoundReport", "preference_loss", "self_improve"]


@dataclass
class ImproveConfig:
    """Settings of :func:`self_improve`.

    Attributes:
        steps: optimizer steps per round; batch_size: examples per step (half human, half pseudo).
        beta: DPO temperature of the preference term.
        pseudo_weight, pref_weight, human_weight: loss weights of (b), (c), (a).
        min_confidence: pseudo-labels whose expected Dice is below are not used.
        min_delta: validation gain a round needs to be kept.
        reward: weights of the reward (lambda etc.).
        tta: flip candidates (one more encoder run per unlabeled image and round).
    """

    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    beta: float = 1.0
    pseudo_weight: float = 1.0
    pref_weight: float = 1.0
    human_weight: float = 1.0
    min_confidence: float = 0.0
    min_delta: float = 0.0
    trainable: tuple[str, ...] = ("mask_decoder", "prompt_encoder")
    human_prompts: int = 3  # simulated box/point prompts per human example (0: prompt-free passes only, cheaper)
    reward: RewardConfig = field(default_factory=RewardConfig)
    tta: bool = False
    seed: int = 0
    max_side: int = 512


@dataclass
class RoundReport:
    round: int
    val_before: float
    val_after: float
    accepted: bool
    n_pseudo: int
    mean_confidence: float
    losses: dict[str, float]
    seconds: float
    message: str


@dataclass
class ImprovementReport:
    """What :func:`self_improve` did.

    Attributes:
        model: the best model (the base weights, copied, when no round helped).
        card: model card fields for ``save_model`` / ``ModelVersions.add``.
        rounds: one :class:`RoundReport` per round run (a rejected round included).
        base_val, final_val: validation Dice before and after.
        message: one line for a UI / CLI.
    """

    model: SamModel
    card: dict
    rounds: list[RoundReport]
    base_val: float
    final_val: float
    message: str
    calibrated: bool = False

    @property
    def improved(self) -> bool:
        return any(r.accepted for r in self.rounds)


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


def _validate(model: SamModel, val_examples, num_passes: int) -> float:
    """Validation Dice (a seam tests patch)."""
    return float(validate(model, val_examples, num_passes)["dice"])


def _cat(feats: list[ImageFeatures]) -> ImageFeatures:
    return ImageFeatures(
        torch.cat([f.embeddings for f in feats]),
        None if feats[0].hires is None else torch.cat([f.hires for f in feats]),
    )


@dataclass
class _Item:
    features: ImageFeatures
    labels: torch.Tensor  # (S, S) int64 (human) or chosen mask (pseudo)
    valid: torch.Tensor
    rejected: torch.Tensor | None = None
    ref_logits: torch.Tensor | None = None  # (1, 1, L, L)
    weight: float = 1.0


def _encode(model: SamModel, image: torch.Tensor) -> ImageFeatures:
    with torch.no_grad():
        dev = next(model.parameters()).device
        return model.encode(model.normalize_pixels(image[None].to(dev)))


def _load_unlabeled(items: Sequence, max_side: int) -> list[np.ndarray]:
    from ..io import read_image

    out = []
    for it in items:
        img = read_image(it) if isinstance(it, (str, Path)) else np.asarray(it)
        out.append(prepare_image(img, max_side))
    return out


def self_improve(
    base: LoadedModel,
    unlabeled: Sequence[np.ndarray | str | Path],
    store_dirs: Sequence[str | Path],
    rounds: int = 3,
    config: ImproveConfig | None = None,
    val_examples: Sequence[Example] | None = None,
    calibrator: RewardCalibrator | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ImprovementReport:
    """Rounds of CSR-style self-improvement on ``unlabeled`` images, mixed with the store's corrected masks.

    Args:
        base: the model to improve; it is deep-copied and never modified.
        unlabeled: images (arrays or paths) without masks.
        store_dirs: annotation stores / data-layout folders with corrected masks (train part is mixed into
            every step; val part validates unless ``val_examples`` is given).
        rounds: at most this many rounds; stops at the first round that does not improve validation.
        val_examples: a labelled validation set (``finetune.data.Example``) instead of the store's val split.
        calibrator: reward calibration; default: fitted on the store with the current model each round.
        progress: ``progress(stage, done, total)``; should_cancel: polled every step (raises TrainingCancelled).

    Raises:
        DataLayoutError: no corrected masks (self-training without them drifts) or no unlabeled images.
    """
    cfg = config or ImproveConfig()
    if not store_dirs:
        raise DataLayoutError("self-improvement needs corrected masks (an annotation store) to anchor it")
    if not unlabeled:
        raise DataLayoutError("no unlabeled images to improve on")
    train_ex, store_val, _ = load_training_data(store_dirs, max_side=cfg.max_side)
    val_ex = list(val_examples) if val_examples else store_val
    base_card = base.model_card
    num_passes = base_card.num_passes
    model = copy.deepcopy(base.model).eval()
    configure_trainable(model, cfg.trainable)
    for p in model.parameters():
        p.requires_grad_(False)
    images = _load_unlabeled(unlabeled, cfg.max_side)
    s = model.img_size
    prep = model_preprocessing(model)
    cache = EmbeddingCache(None, max_memory_entries=len(images) + 8)
    cache_id = f"{base.model_id}:improve-frozen-encoder"
    human: list[_Item] = []
    for ex in train_ex:
        smp = prepare_sample(ex, s, preprocessing=prep)
        human.append(_Item(_encode(model, smp.image), smp.labels, smp.valid))
    unl_feats: dict[int, tuple[ImageFeatures, torch.Tensor]] = {}
    base_val = best_val = _validate(model, val_ex, num_passes)
    reports: list[RoundReport] = []
    messages: list[str] = []
    calibrated = False
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for r in range(1, int(rounds) + 1):
        t0 = time.time()
        model.eval()
        predictor = Predictor(model, cache_id, cache)
        cal = calibrator or fit_calibrator(predictor, store_dirs, num_passes, cfg.reward, cfg.max_side)
        calibrated = cal.calibrated
        ref = copy.deepcopy(model).eval()
        pseudo: list[_Item] = []
        confs = []
        for i, rgb in enumerate(images):
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(f"self-improvement cancelled in round {r}")
            sc = score_image(predictor, rgb, cal, num_passes, cfg.tta, max_side=None)
            cands = sc.candidates
            ci, ri = sc.chosen, sc.rejected
            conf = float(cal.expected_dice(cfg.reward.self_score(sc.self_feats[ci]), cfg.reward.evidence_score(sc.evidence_feats[ci]))[0])
            if progress:
                progress(f"round {r}: scoring", i + 1, len(images))
            if conf < cfg.min_confidence:
                continue
            chosen = prepare_sample(Example(rgb, cands.masks[ci].astype(np.int32), "unlabeled", str(i)), s, preprocessing=prep)
            rejected = prepare_sample(Example(rgb, cands.masks[ri].astype(np.int32), "unlabeled", str(i)), s, preprocessing=prep)
            if i not in unl_feats:
                unl_feats[i] = (_encode(model, chosen.image), chosen.valid)
            feats, valid = unl_feats[i]
            with torch.no_grad():
                ref_lr = SamSP(ref, num_passes=num_passes).run_passes(feats)[-1].logits
            pseudo.append(_Item(feats, chosen.labels, valid, rejected.labels, ref_lr, conf))
            confs.append(conf)
        losses = _train_round(model, human, pseudo, cfg, num_passes, should_cancel, progress, r)
        val = _validate(model, val_ex, num_passes)
        accepted = val > best_val + cfg.min_delta
        if accepted:
            msg = f"round {r}: validation Dice {best_val:.4f} -> {val:.4f}: kept"
            before, best_val = best_val, val
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            prev = "the base model" if r == 1 else f"the model of round {r - 1}"
            msg = f"round {r}: validation Dice {val:.4f} did not beat {best_val:.4f}: kept {prev} and stopped"
            before = best_val
            model.load_state_dict(best_state)
        log.info(msg)
        messages.append(msg)
        reports.append(RoundReport(r, before, val, accepted, len(pseudo), float(np.mean(confs)) if confs else 0.0, losses, time.time() - t0, msg))
        if not accepted:
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n_ok = sum(rep.accepted for rep in reports)
    summary = (f"self-improvement: {n_ok} of {len(reports)} round(s) kept, validation Dice {base_val:.4f} -> {best_val:.4f}"
               if n_ok else f"self-improvement did not help (validation Dice stays {base_val:.4f}); the base model is kept")
    card = base_card.child(
        parent=base_card.version or base.source,
        training_data=[{"name": "self-improvement (unlabeled)", "count": len(images)},
                       {"name": "corrected masks", "count": len(train_ex)}],
        steps=cfg.steps * len(reports),
        metrics={"before": {"dice": base_val}, "after": {"dice": best_val}},
        self_improve={"rounds": [rep.__dict__ for rep in reports], "lam": cfg.reward.lam, "beta": cfg.beta,
                      "trainable": list(cfg.trainable), "calibrated": calibrated},
    ).to_dict()
    return ImprovementReport(model, card, reports, base_val, best_val, summary, calibrated)


def _train_round(model: SamModel, human: list[_Item], pseudo: list[_Item], cfg: ImproveConfig, num_passes: int,
                 should_cancel, progress, r: int) -> dict[str, float]:
    torch.manual_seed(cfg.seed + r)
    rng = random.Random(cfg.seed * 1000 + r)
    model.train()
    params = configure_trainable(model, cfg.trainable)
    objective = SelfPromptObjective(model, ObjectiveConfig(num_passes=num_passes, prompts_per_image=cfg.human_prompts,
                                                        prompt_weight=1.0 if cfg.human_prompts else 0.0, click_iterations=1), seed=cfg.seed + r)
    sp = SamSP(model, num_passes=num_passes)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    n_h = max(1, cfg.batch_size // 2) if pseudo else cfg.batch_size
    n_p = max(1, cfg.batch_size - n_h) if pseudo else 0
    sums: dict[str, float] = {}
    for step in range(cfg.steps):
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled(f"self-improvement cancelled in round {r} at step {step}")
        hb = [rng.choice(human) for _ in range(n_h)]
        total = torch.zeros(())
        parts: dict[str, torch.Tensor] = {}
        hl = objective(None, torch.stack([h.labels for h in hb]), torch.stack([h.valid for h in hb]), features=_cat([h.features for h in hb]))
        parts["human"] = hl["total"]
        total = total + cfg.human_weight * hl["total"]
        if n_p:
            pb = [rng.choice(pseudo) for _ in range(n_p)]
            feats = _cat([p.features for p in pb])
            valid = torch.stack([p.valid for p in pb])[:, None]
            chosen = torch.stack([(p.labels > 0) for p in pb])[:, None].float()
            rejected = torch.stack([(p.rejected > 0) for p in pb])[:, None].float()
            w = torch.tensor([p.weight for p in pb])
            passes = sp.run_passes(feats)
            up = [model.upscale_logits(p.logits) for p in passes]
            seg = sum(
                sum(w[i] * segmentation_loss(u[i : i + 1], chosen[i : i + 1], valid[i : i + 1].float()) for i in range(len(pb)))
                for u in up
            ) / (len(up) * w.sum().clamp_min(1e-6))
            ref_up = model.upscale_logits(torch.cat([p.ref_logits for p in pb]))
            pref = preference_loss(up[-1], ref_up, chosen, rejected, valid, cfg.beta)
            parts["pseudo"], parts["pref"] = seg, pref
            total = total + cfg.pseudo_weight * seg + cfg.pref_weight * pref
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(total):
            log.warning("non-finite self-improvement loss at step %d: skipped", step)
            continue
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if progress:
            progress(f"round {r}: training", step + 1, cfg.steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {k: v / max(1, cfg.steps) for k, v in sums.items()}


# Public names for recipes that train on pre-encoded items (training/bench_active_learning.py);
# the private names above stay for the code in this module.
TrainItem = _Item  # one training image: encoder features, target labels (S, S), valid mask
train_round = _train_round  # one round of AdamW steps on human + pseudo items; returns mean losses
