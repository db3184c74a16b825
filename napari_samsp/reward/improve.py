"""The self-improvement round (after CSR): score -> pseudo set -> train -> gate.

Per round, on a copy of the current model:

1. **score**: every unlabeled image is segmented into a candidate pool (``candidates.py``) and each candidate
   gets the CSR reward; **chosen** = best, **rejected** = worst of the pool; the chosen mask's calibrated
   expected Dice is its confidence;
2. **pseudo set**: one :class:`~napari_samsp.reward.objective.PseudoExample` per confident image;
3. **train**: ``finetune.loop.train`` (the one loop: schedule, clipping, NaN skip, cancel, DDP) with
   :class:`~napari_samsp.reward.objective.SelfImproveObjective` (the store's corrected masks with the usual
   objective, always; the chosen masks as confidence-weighted pseudo-labels; a pixel-wise DPO preference term
   against a frozen reference, the model at the start of the round) and a
   :class:`~napari_samsp.reward.objective.MixedSampler` (half corrected, half pseudo-labelled per step);
4. **gate**: validation Dice (the store's validation split, or a given labelled set) decides: a round that
   does not improve it is undone (the previous model is kept) and the iteration stops.

Only the prompt encoder and mask decoder train by default (the encoder is frozen), so image embeddings are
computed once and reused across steps and rounds. The base model is never modified.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataLayoutError
from ..finetune.data import AugmentConfig, Example
from ..finetune.job import load_training_data
from ..finetune.loop import (
    Callbacks,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    _copy_weights,
    configure_trainable,
    train,
    validate,
)
from ..finetune.objective import ObjectiveConfig
from ..models.checkpoints import LoadedModel
from ..models.sam_model import SamModel
from ..predictor import EmbeddingCache, Predictor
from .calibration import RewardCalibrator, RewardConfig
from .candidates import prepare_image
from .objective import MixedSampler, PseudoExample, SelfImproveObjective, preference_loss
from .ranking import fit_calibrator, score_image

log = logging.getLogger(__name__)

__all__ = ["ImproveConfig", "ImprovementReport", "RoundReport", "preference_loss", "self_improve"]


@dataclass
class ImproveConfig:
    """Settings of :func:`self_improve`.

    Attributes:
        steps: optimizer steps per round; batch_size: examples per step (half human, half pseudo).
        lr, weight_decay, warmup_steps, grad_clip, max_bad_steps: the one loop's optimiser settings
            (``finetune.loop.TrainConfig``); the learning rate follows its warm-up + cosine schedule.
        beta: DPO temperature of the preference term.
        pseudo_weight, pref_weight, human_weight: loss weights of the pseudo-labels, the preference
            term and the corrected masks.
        min_confidence: pseudo-labels whose expected Dice is below are not used.
        min_delta: validation gain a round needs to be kept.
        human_prompts, click_iterations: simulated box/point prompts per corrected example (0: prompt-free
            passes only, cheaper) and corrective clicks after each.
        augment: the loop's augmentation (None: none, as before; chosen and rejected masks follow the image).
        reward: weights of the reward (lambda etc.).
        tta: flip candidates (one more encoder run per unlabeled image and round).
        multimask: SAM's three multimask outputs in the candidate pools (and so as chosen / rejected masks);
            None: only where they are trained (official SAM architectures, ``candidates.multimask_trained``).
    """

    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_bad_steps: int = 10
    beta: float = 1.0
    pseudo_weight: float = 1.0
    pref_weight: float = 1.0
    human_weight: float = 1.0
    min_confidence: float = 0.0
    min_delta: float = 0.0
    trainable: tuple[str, ...] = ("mask_decoder", "prompt_encoder")
    human_prompts: int = 3
    click_iterations: int = 1
    augment: AugmentConfig | None = None
    reward: RewardConfig = field(default_factory=RewardConfig)
    tta: bool = False
    multimask: bool | None = None
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


def _validate(model: SamModel, val_examples, num_passes: int) -> float:
    """Validation Dice (a seam tests patch)."""
    return float(validate(model, val_examples, num_passes)["dice"])


def _load_unlabeled(items: Sequence, max_side: int) -> list[np.ndarray]:
    from ..io import read_image

    out = []
    for it in items:
        img = read_image(it) if isinstance(it, (str, Path)) else np.asarray(it)
        out.append(prepare_image(img, max_side))
    return out


@dataclass
class _Run:
    """What every round of one :func:`self_improve` call shares."""

    cfg: ImproveConfig
    num_passes: int
    human: list[Example]
    images: list[np.ndarray]  # unlabeled, on the scoring grid (H, W, 3) uint8; their arrays key the feature cache
    val: list[Example]
    store_dirs: Sequence[str | Path]
    calibrator: RewardCalibrator | None
    progress: Callable[[str, int, int], None] | None
    should_cancel: Callable[[], bool] | None
    cache: EmbeddingCache
    cache_id: str
    feature_cache: dict = field(default_factory=dict)  # frozen-encoder embeddings for the loop, across rounds


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
        progress: ``progress(stage, done, total)``; should_cancel: polled per image and every step
            (raises TrainingCancelled).

    Raises:
        DataLayoutError: no corrected masks (self-training without them drifts) or no unlabeled images.
    """
    cfg = config or ImproveConfig()
    if not store_dirs:
        raise DataLayoutError("self-improvement needs corrected masks (an annotation store) to anchor it")
    if not unlabeled:
        raise DataLayoutError("no unlabeled images to improve on")
    train_ex, store_val, _ = load_training_data(store_dirs, max_side=cfg.max_side)
    images = _load_unlabeled(unlabeled, cfg.max_side)
    run = _Run(cfg, base.model_card.num_passes, list(train_ex), images, list(val_examples) if val_examples else store_val,
               store_dirs, calibrator, progress, should_cancel, EmbeddingCache(None, max_memory_entries=len(images) + 8),
               f"{base.model_id}:improve-frozen-encoder")
    model = copy.deepcopy(base.model)
    configure_trainable(model, cfg.trainable)  # LoRA adapters (if any) exist before the first snapshot
    _frozen(model)
    base_val = best_val = _validate(model, run.val, run.num_passes)
    reports: list[RoundReport] = []
    calibrated = False
    best_state = _copy_weights(model)
    for r in range(1, int(rounds) + 1):
        t0 = time.time()
        pseudo, calibrated = _pseudo_set(model, run, r)
        losses, diverged = _train_round(model, pseudo, run, r)
        val = _validate(model, run.val, run.num_passes)
        report = _gate(r, best_val, val, pseudo, losses, diverged, cfg.min_delta, time.time() - t0)
        if report.accepted:
            best_val, best_state = val, _copy_weights(model)
        else:
            model.load_state_dict(best_state)
        log.info(report.message)
        reports.append(report)
        if not report.accepted:
            break
    _frozen(model)
    n_ok = sum(rep.accepted for rep in reports)
    summary = (f"self-improvement: {n_ok} of {len(reports)} round(s) kept, validation Dice {base_val:.4f} -> {best_val:.4f}"
               if n_ok else f"self-improvement did not help (validation Dice stays {base_val:.4f}); the base model is kept")
    card = _card(base, run, reports, base_val, best_val, calibrated)
    return ImprovementReport(model, card, reports, base_val, best_val, summary, calibrated)


def _frozen(model: SamModel) -> SamModel:
    """``model`` in eval mode with no parameter requiring grad (what the scoring and the caller get)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _pseudo_set(model: SamModel, run: _Run, r: int) -> tuple[list[PseudoExample], bool]:
    """Score every unlabeled image with the current model; -> its pseudo-labelled examples, calibrated?"""
    cfg = run.cfg
    predictor = Predictor(model.eval(), run.cache_id, run.cache)
    cal = run.calibrator or fit_calibrator(predictor, run.store_dirs, run.num_passes, cfg.reward, cfg.max_side,
                                           multimask=cfg.multimask)
    pseudo: list[PseudoExample] = []
    for i, rgb in enumerate(run.images):
        if run.should_cancel is not None and run.should_cancel():
            raise TrainingCancelled(f"self-improvement cancelled in round {r}")
        sc = score_image(predictor, rgb, cal, run.num_passes, cfg.tta, max_side=None, multimask=cfg.multimask)
        ci, ri = sc.chosen, sc.rejected
        conf = float(cal.expected_dice(cfg.reward.self_score(sc.self_feats[ci]), cfg.reward.evidence_score(sc.evidence_feats[ci]))[0])
        if run.progress:
            run.progress(f"round {r}: scoring", i + 1, len(run.images))
        if conf >= cfg.min_confidence:
            pseudo.append(PseudoExample.from_masks(rgb, sc.candidates.masks[ci], sc.candidates.masks[ri], conf, str(i)))
    return pseudo, cal.calibrated


def round_config(cfg: ImproveConfig, num_passes: int, seed: int, batch_size: int) -> TrainConfig:
    """The one loop's settings for a self-improvement round (no validation inside: the gate validates)."""
    human = ObjectiveConfig(num_passes=num_passes, prompts_per_image=cfg.human_prompts,
                            prompt_weight=1.0 if cfg.human_prompts else 0.0, click_iterations=cfg.click_iterations)
    return TrainConfig(steps=cfg.steps, batch_size=batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip, trainable=tuple(cfg.trainable),
                       objective=human, augment=cfg.augment, seed=seed, max_bad_steps=cfg.max_bad_steps)


def _train_round(model: SamModel, pseudo: list[PseudoExample], run: _Run, r: int) -> tuple[dict[str, float], str | None]:
    """Train ``model`` in place on corrected + pseudo examples through ``finetune.loop.train``.

    Returns the mean of each loss over the steps taken and, when the loss stayed non-finite, why.
    """
    cfg = run.cfg
    n_h = max(1, cfg.batch_size // 2) if pseudo else cfg.batch_size
    n_p = max(1, cfg.batch_size - n_h) if pseudo else 0
    tcfg = round_config(cfg, run.num_passes, cfg.seed + r, n_h + n_p)
    reference = copy.deepcopy(model).eval()  # the model at the start of the round, frozen

    def objective(m: SamModel, seed: int) -> SelfImproveObjective:
        return SelfImproveObjective(m, reference, tcfg.objective, seed, beta=cfg.beta, human_weight=cfg.human_weight,
                                    pseudo_weight=cfg.pseudo_weight, pref_weight=cfg.pref_weight)

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def on_loss(step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            if k != "lr":
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1

    def on_progress(step: int, total: int) -> None:
        if run.progress:
            run.progress(f"round {r}: training", step, total)

    callbacks = Callbacks(progress=on_progress, on_loss=on_loss, should_cancel=run.should_cancel)
    diverged = None
    try:
        train(model, run.human + pseudo, (), tcfg, callbacks, device=next(model.parameters()).device,
              objective=objective, sampler=MixedSampler.factory(n_h, n_p), feature_cache=run.feature_cache)
    except TrainingCancelled as e:
        raise TrainingCancelled(f"self-improvement cancelled in round {r}: {e}") from e
    except TrainingDiverged as e:
        log.warning("self-improvement round %d: %s", r, e)
        diverged = str(e)
    _frozen(model)
    return {k: sums[k] / counts[k] for k in sums}, diverged


def _gate(r: int, best_val: float, val: float, pseudo: list[PseudoExample], losses: dict[str, float],
          diverged: str | None, min_delta: float, seconds: float) -> RoundReport:
    """Keep the round only when validation Dice beats the best so far by more than ``min_delta``."""
    accepted = diverged is None and val > best_val + min_delta
    prev = "the base model" if r == 1 else f"the model of round {r - 1}"
    if accepted:
        msg = f"round {r}: validation Dice {best_val:.4f} -> {val:.4f}: kept"
    elif diverged is not None:
        msg = f"round {r}: training diverged ({diverged}): kept {prev} and stopped"
    else:
        msg = f"round {r}: validation Dice {val:.4f} did not beat {best_val:.4f}: kept {prev} and stopped"
    confs = [p.weight for p in pseudo]
    return RoundReport(r, best_val, val, accepted, len(pseudo), float(np.mean(confs)) if confs else 0.0, losses, seconds, msg)


def _card(base: LoadedModel, run: _Run, reports: list[RoundReport], base_val: float, best_val: float,
          calibrated: bool) -> dict:
    """The child model card of the improved model (``save_model`` / ``ModelVersions.add``)."""
    cfg, base_card = run.cfg, base.model_card
    return base_card.child(
        parent=base_card.version or base.source,
        training_data=[{"name": "self-improvement (unlabeled)", "count": len(run.images)},
                       {"name": "corrected masks", "count": len(run.human)}],
        steps=cfg.steps * len(reports),
        metrics={"before": {"dice": base_val}, "after": {"dice": best_val}},
        self_improve={"rounds": [rep.__dict__ for rep in reports], "lam": cfg.reward.lam, "beta": cfg.beta,
                      "trainable": list(cfg.trainable), "calibrated": calibrated},
    ).to_dict()
