"""The training loop shared by the CLI, the plugin and the ``training/`` recipes.

One function, :func:`train`, with callbacks for progress and losses, a cancel
check, validation with early stopping, a NaN guard, resumable checkpoints and
DDP when ``torch.distributed`` is initialised. It never writes the model it was
given anywhere: saving a new version is the caller's job (see ``versions.py``).

What is optimised and what is drawn are values: ``objective`` (default
:class:`SelfPromptObjective` from ``config.objective``) and ``sampler`` (default
:class:`BalancedSampler`). Self-improvement (``reward/improve.py``) passes its
pseudo-label + preference objective and a mixed sampler and gets the same
schedule, clipping, NaN skip, cancel, checkpoints and DDP.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

from ..errors import SamspError
from ..io import write_atomic
from ..models.lora import apply_lora, lora_parameters
from ..models.sam_model import SamModel
from ..models.sam_sp import SamSP
from ..models.sam_unet import SamUNet
from ..transforms import model_preprocessing
from .data import AugmentConfig, BalancedSampler, Example, check_examples, collate, prepare_sample
from .objective import ObjectiveConfig, SelfPromptObjective

log = logging.getLogger(__name__)

TRAINABLE_PARTS = ("encoder", "lora", "prompt_encoder", "mask_decoder", "unet", "unet_decoder")
# The SAM-UNet modules each part names. "unet_decoder" is the branch's fusion into the mask decoder
# alone: it shapes the per-pixel features every mask is read from, but not the embeddings, so the
# image encoder and the branch itself stay frozen (and their forward pass needs no gradient).
_UNET_MODULES = {
    "unet": ("cnn_branch", "encoder_fusion", "decoder_fusion", "vit_reduce"),
    "unet_decoder": ("decoder_fusion", "vit_reduce"),
}


class Sampler(Protocol):
    """Anything that draws training examples one at a time (e.g. :class:`BalancedSampler`)."""

    def draw(self) -> Example: ...


# sampler(train_examples, seed) -> Sampler; the loop passes a seed that differs per DDP rank and resume step.
SamplerFactory = Callable[[Sequence[Example], int], Sampler]
# objective(model, seed) -> nn.Module; the loop passes a seed that differs per DDP rank.
ObjectiveFactory = Callable[[SamModel, int], torch.nn.Module]
Objective = Union[torch.nn.Module, ObjectiveFactory]


class TrainingCancelled(SamspError):
    """Raised inside the loop when the cancel check returns True."""


class TrainingDiverged(SamspError):
    """Raised when the loss stays non-finite: the model is left as it was before the bad steps."""


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    trainable: tuple[str, ...] = ("encoder", "prompt_encoder", "mask_decoder", "unet")
    lora_rank: int = 4
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    val_every: int = 100
    patience: int = 0  # validations without improvement before stopping; 0 = never stop early
    checkpoint_every: int = 100
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA only
    max_bad_steps: int = 10
    # Validate the starting weights too, so the returned model is never worse on
    # the validation split than the one fine-tuning started from.
    validate_at_start: bool = False
    # With validate_at_start: a trained step replaces the starting weights only when
    # its validation Dice is higher by more than this. Small validation sets are
    # noisy, and swapping a working model for a "better by 0.001" one is a coin toss.
    min_gain: float = 0.0
    domain_weights: dict[str, float] | None = None  # sampling weight per domain (default: balanced)
    # Wall-clock budget (s) for this call: stop after the step that crosses it, and run the LR
    # schedule on max(step / steps, elapsed / max_seconds) so a time-boxed run still anneals.
    max_seconds: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainState:
    step: int = 0
    best_val: float = -1.0
    best_step: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass
class Callbacks:
    """Hooks for UIs and logs. ``progress(step, total)``, ``on_loss(step, losses)``, ``on_val(step, metrics)``."""

    progress: Callable[[int, int], None] | None = None
    on_loss: Callable[[int, dict[str, float]], None] | None = None
    on_val: Callable[[int, dict[str, float]], None] | None = None
    should_cancel: Callable[[], bool] | None = None


@dataclass
class TrainResult:
    model: SamModel  # the best model (by validation Dice when validating)
    state: TrainState
    seconds: float
    stopped_early: bool


def configure_trainable(model: SamModel, parts: Sequence[str], lora_rank: int = 4) -> list[torch.nn.Parameter]:
    """Freeze everything, then unfreeze the named parts; returns the trainable parameters."""
    unknown = set(parts) - set(TRAINABLE_PARTS)
    if unknown:
        raise SamspError(f"unknown trainable parts {sorted(unknown)}; choose from {', '.join(TRAINABLE_PARTS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    if "encoder" in parts:
        params += list(model.image_encoder.parameters())
    elif "lora" in parts:
        apply_lora(model.image_encoder, lora_rank)
        params += lora_parameters(model.image_encoder)
    if "prompt_encoder" in parts:
        params += list(model.prompt_encoder.parameters())
    if "mask_decoder" in parts:
        params += list(model.mask_decoder.parameters())
    if isinstance(model, SamUNet):
        names = dict.fromkeys(m for part in parts for m in _UNET_MODULES.get(part, ()))
        for name in names:
            params += list(getattr(model, name).parameters())
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise SamspError(f"nothing to train with parts {list(parts)} on this model")
    return params


def encoder_is_frozen(model: SamModel) -> bool:
    """True when no parameter that affects ``encode`` trains, so embeddings can be cached."""
    enc = [model.image_encoder]
    if isinstance(model, SamUNet):
        enc += [model.cnn_branch, model.encoder_fusion, model.decoder_fusion, model.vit_reduce]
    return not any(p.requires_grad for m in enc for p in m.parameters())


@torch.inference_mode()
def validate(model: SamModel, examples: Sequence[Example], num_passes: int, batch_size: int = 8) -> dict[str, float]:
    """Prompt-free Dice of the last self-prompting pass, per domain and mean over domains.

    Computed in the model's input frame over the unpadded area, on un-augmented images.
    A domain's Dice averages the images whose ground truth has foreground: scoring
    empty-truth images 1 for an empty prediction made "predict nothing" win model
    selection on data with empty masks (polyps). Those images are reported apart,
    as ``empty_fp/<domain>``: the fraction where the model predicted foreground.
    """
    was_training = model.training
    model.eval()
    sp = SamSP(model, num_passes=num_passes)
    prep = model_preprocessing(model)
    per_domain: dict[str, list[float]] = {}
    empty_fp: dict[str, list[float]] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        images, labels, valid = collate([prepare_sample(ex, model.img_size, preprocessing=prep) for ex in chunk])
        dev = next(model.parameters()).device
        outs = sp.run_passes(model.encode(model.normalize_pixels(images.to(dev))))
        pred = (model.upscale_logits(outs[-1].logits)[:, 0] > 0).cpu() & valid
        gt = labels > 0
        inter = (pred & gt).flatten(1).sum(1).float()
        denom = (pred.flatten(1).sum(1) + gt.flatten(1).sum(1)).float()
        dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(inter))
        has_gt = gt.flatten(1).any(1)
        has_pred = pred.flatten(1).any(1)
        for ex, d, g, p in zip(chunk, dice.tolist(), has_gt.tolist(), has_pred.tolist()):
            if g:
                per_domain.setdefault(ex.domain, []).append(d)
            else:
                empty_fp.setdefault(ex.domain, []).append(float(p))
    model.train(was_training)
    domains = sorted(set(per_domain) | set(empty_fp))
    metrics: dict[str, float] = {}
    for k in domains:
        # A domain of only empty masks falls back to "1 when nothing is predicted".
        scores = per_domain.get(k) or [1.0 - f for f in empty_fp[k]]
        metrics[f"dice/{k}"] = float(np.mean(scores))
        if k in empty_fp:
            metrics[f"empty_fp/{k}"] = float(np.mean(empty_fp[k]))
    metrics["dice"] = float(np.mean([metrics[f"dice/{k}"] for k in domains])) if domains else float("nan")
    return metrics


def lr_at(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """The learning rate at ``step``: linear warm-up, then cosine down to 5% of ``cfg.lr``.

    ``time_fraction`` (elapsed / ``max_seconds``) advances the cosine when it is ahead of the steps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_fraction)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


_lr_at = lr_at  # the old private name


def _save_checkpoint(path: Path, model: SamModel, opt: torch.optim.Optimizer, state: TrainState, best: dict | None) -> None:
    """Write the resumable checkpoint atomically; ``finetune.checkpoint.load_checkpoint`` reads it (keep both in step)."""
    payload = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "best": best,
        "state": {"step": state.step, "best_val": state.best_val, "best_step": state.best_step, "history": state.history},
    }
    # The one atomic writer: unique temporary file, fsync, rename, folder fsync (the old fixed
    # ``<name>.tmp`` could collide between two runs writing the same checkpoint).
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _rank_agree(flag: bool, device: torch.device, how: Literal["all", "rank0"]) -> bool:
    """One decision shared by every DDP rank (``flag`` itself when not distributed).

    ``"all"``: True only when it is True on every rank (all-reduce MIN). ``"rank0"``: rank 0's value
    (broadcast), for what only rank 0 knows or where the ranks' clocks differ. Every rank must call
    this at the same point with the same ``how``: a collective called on one rank only deadlocks gloo.
    """
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if how == "all":
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    else:
        dist.broadcast(t, 0)
    return bool(t.item() > 0)


def _copy_weights(model: SamModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Run:
    """One call of :func:`train`: what it set up, and what changes from step to step."""

    model: SamModel
    cfg: TrainConfig
    cb: Callbacks
    device: torch.device
    runner: torch.nn.Module  # the objective, or its DDP wrapper
    call_kwargs: dict  # {"examples": ...} for objectives with ``wants_examples``, else {}
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    state: TrainState = field(default_factory=TrainState)
    best: dict | None = None  # the best weights so far (by validation Dice)
    draws: Sampler | None = None
    rng: random.Random | None = None  # augmentation draws
    cache_features: bool = False  # frozen encoder: reuse embeddings
    feature_cache: dict = field(default_factory=dict)
    use_amp: bool = False
    t0: float = 0.0
    bad_steps: int = 0  # non-finite losses in a row
    stopped_early: bool = False
    validations_without_gain: int = 0


def train(
    model: SamModel,
    train_examples: Sequence[Example],
    val_examples: Sequence[Example] = (),
    config: TrainConfig | None = None,
    callbacks: Callbacks | None = None,
    checkpoint_path: Path | None = None,
    device: torch.device | str = "cpu",
    *,
    objective: Objective | None = None,
    sampler: SamplerFactory | None = None,
    feature_cache: dict | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``train_examples``; return the best weights.

    Resumes from ``checkpoint_path`` when it exists (model, optimizer, step, best).
    Raises :class:`TrainingCancelled` when ``callbacks.should_cancel()`` turns True
    and :class:`TrainingDiverged` after ``max_bad_steps`` non-finite losses in a row.

    Args:
        objective: an ``nn.Module`` built on ``model``, or a factory ``objective(model, seed)``
            returning one; default :class:`SelfPromptObjective` with ``config.objective``. Its
            ``forward(images (B,3,S,S) in [0,255] or None, labels (B,S,S) int64, valid (B,S,S) bool,
            features=None)`` returns a dict of scalar losses with ``"total"``; an objective with the
            attribute ``wants_examples = True`` also gets ``examples=`` (the drawn :class:`Example`
            objects, in row order) for per-example data that augmentation must not touch.
        sampler: a factory ``sampler(train_examples, seed)`` of an object with ``draw() -> Example``;
            default :class:`BalancedSampler` with ``config.domain_weights``.
        feature_cache: a dict to keep frozen-encoder embeddings in across calls (keyed by the example's
            image array, which must not change while it is cached); default: a fresh one per call.
    """
    cfg = config or TrainConfig()
    cb = callbacks or Callbacks()
    check_examples(train_examples)
    run = _setup(model, cfg, cb, torch.device(device), objective, checkpoint_path)
    _start_drawing(run, train_examples, sampler, feature_cache)
    if val_examples and _is_main() and cfg.validate_at_start and run.state.step == 0:
        _validate_start(run, val_examples)
    while run.state.step < cfg.steps:
        if _one_step(run, val_examples, checkpoint_path):
            break
    return _finish(run)


def _setup(model: SamModel, cfg: TrainConfig, cb: Callbacks, device: torch.device, objective: Objective | None,
           checkpoint_path: Path | str | None) -> _Run:
    """Seed, move and freeze the model, build the objective (DDP-wrapped when distributed) and the
    optimizer, and resume from ``checkpoint_path`` when it exists."""
    rank = _rank()
    torch.manual_seed(cfg.seed + rank)
    model.to(device).train()
    params = configure_trainable(model, cfg.trainable, cfg.lora_rank)
    module = _build_objective(objective, model, cfg, cfg.seed + rank).to(device)
    call_kwargs = {"examples": None} if getattr(module, "wants_examples", False) else {}
    runner: torch.nn.Module = module
    if dist.is_initialized():
        runner = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = _Run(model, cfg, cb, device, runner, call_kwargs, params, opt)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        _resume(run, checkpoint_path)
    return run


def _resume(run: _Run, checkpoint_path: Path | str) -> None:
    """Load model, optimizer, step, history and best weights from a checkpoint of ``_save_checkpoint``."""
    ckpt = torch.load(checkpoint_path, map_location=run.device, weights_only=True)
    run.model.load_state_dict(ckpt["model"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.best = ckpt.get("best")
    s = ckpt["state"]
    run.state = TrainState(s["step"], s["best_val"], s["best_step"], list(s["history"]))
    log.info("resumed from %s at step %d", checkpoint_path, run.state.step)


def _start_drawing(run: _Run, train_examples: Sequence[Example], sampler: SamplerFactory | None,
                   feature_cache: dict | None) -> None:
    """The sampler and augmentation RNG (seeded per rank and resume step), the embedding cache, the clock."""
    cfg, rank, step = run.cfg, _rank(), run.state.step
    sampler_seed = cfg.seed * 1000 + rank + step
    if sampler is None:
        run.draws = BalancedSampler(train_examples, seed=sampler_seed, domain_weights=cfg.domain_weights)
    else:
        run.draws = sampler(train_examples, sampler_seed)
    run.rng = random.Random(cfg.seed * 7919 + rank + step)
    run.cache_features = encoder_is_frozen(run.model)
    run.feature_cache = {} if feature_cache is None else feature_cache
    run.use_amp = cfg.amp and run.device.type == "cuda"
    run.t0 = time.time()


def _one_step(run: _Run, val_examples: Sequence[Example], checkpoint_path: Path | str | None) -> bool:
    """One optimisation step, then validation, early stopping and checkpoint when due; True: stop now.

    The collectives (finite-loss all-reduce, out-of-time and early-stop broadcasts) are called
    on every rank in this order; validation and checkpoints run on rank 0 only.
    """
    cfg, state = run.cfg, run.state
    if run.cb.should_cancel is not None and run.cb.should_cancel():
        raise TrainingCancelled(f"fine-tuning cancelled at step {state.step}")
    loss_dict = _forward(run)
    loss = loss_dict["total"]
    run.opt.zero_grad(set_to_none=True)
    # Every rank must skip together: a rank that skipped backward alone
    # would leave the others waiting in DDP's gradient all-reduce.
    if not _rank_agree(bool(torch.isfinite(loss)), run.device, "all"):
        _skip_bad_step(run)
        return False
    run.bad_steps = 0
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.opt.step()
    state.step += 1
    values = {k: float(v.detach()) for k, v in loss_dict.items()}
    values["lr"] = run.opt.param_groups[0]["lr"]
    if run.cb.on_loss:
        run.cb.on_loss(state.step, values)
    if run.cb.progress:
        run.cb.progress(state.step, cfg.steps)
    out_of_time = bool(cfg.max_seconds) and time.time() - run.t0 >= cfg.max_seconds
    if cfg.max_seconds:
        out_of_time = _rank_agree(out_of_time, run.device, "rank0")  # ranks' clocks differ: rank 0 decides
    last = state.step == cfg.steps or out_of_time
    if val_examples and _is_main() and (state.step % cfg.val_every == 0 or last):
        _validate_step(run, val_examples, values["total"])
    if dist.is_initialized() and cfg.patience and (state.step % cfg.val_every == 0 or last):
        # Only rank 0 validates: share its early-stopping decision, or the
        # other ranks would go on alone and wait forever in the all-reduce.
        run.stopped_early = _rank_agree(run.stopped_early, run.device, "rank0")
    if checkpoint_path is not None and _is_main() and (state.step % cfg.checkpoint_every == 0 or last or run.stopped_early):
        _save_checkpoint(Path(checkpoint_path), run.model, run.opt, state, run.best)
    return run.stopped_early or out_of_time


def _forward(run: _Run) -> dict[str, torch.Tensor]:
    """Set this step's learning rate, draw a batch and run the objective on it: its dict of scalar losses."""
    cfg, model = run.cfg, run.model
    time_fraction = (time.time() - run.t0) / cfg.max_seconds if cfg.max_seconds else 0.0
    for group in run.opt.param_groups:
        group["lr"] = _lr_at(run.state.step, cfg, time_fraction)
    exs = [run.draws.draw() for _ in range(cfg.batch_size)]
    if run.call_kwargs:
        run.call_kwargs["examples"] = exs
    if run.cache_features:
        # Frozen encoder: embeddings depend only on the image (dihedral
        # augmentation is applied by caching each variant), so reuse them.
        return _cached_step(model, run.runner, exs, run.rng, run.feature_cache, cfg, run.device, run.call_kwargs)
    images, labels, valid = collate([prepare_sample(ex, model.img_size, run.rng, cfg.augment, model_preprocessing(model)) for ex in exs])
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.use_amp):
        return run.runner(images.to(run.device), labels.to(run.device), valid.to(run.device), **run.call_kwargs)


def _skip_bad_step(run: _Run) -> None:
    """Count a step whose loss was non-finite on some rank (no backward); raise after ``max_bad_steps``."""
    run.bad_steps += 1
    log.warning("non-finite loss at step %d (%d in a row); step skipped", run.state.step, run.bad_steps)
    if run.bad_steps >= run.cfg.max_bad_steps:
        raise TrainingDiverged(f"loss was NaN/inf for {run.bad_steps} steps in a row at step {run.state.step}; stopped")
    run.state.step += 1


def _validate_start(run: _Run, val_examples: Sequence[Example]) -> None:
    """Validate the starting weights (step 0): they are the best until a step beats them."""
    metrics = validate(run.model, val_examples, run.cfg.objective.num_passes)
    run.state.history.append({"step": 0, "time": 0.0, **metrics})
    if run.cb.on_val:
        run.cb.on_val(0, metrics)
    run.state.best_val, run.state.best_step = metrics["dice"], 0
    run.best = _copy_weights(run.model)


def _validate_step(run: _Run, val_examples: Sequence[Example], loss: float) -> None:
    """Validate after a step: keep the weights when Dice improves, count toward ``patience`` when not."""
    cfg, state = run.cfg, run.state
    metrics = validate(run.model, val_examples, cfg.objective.num_passes)
    state.history.append({"step": state.step, "time": time.time() - run.t0, **metrics, "loss": loss})
    if run.cb.on_val:
        run.cb.on_val(state.step, metrics)
    margin = cfg.min_gain if (cfg.validate_at_start and state.best_step == 0) else 0.0
    if metrics["dice"] > state.best_val + margin:
        state.best_val, state.best_step = metrics["dice"], state.step
        run.best = _copy_weights(run.model)
        run.validations_without_gain = 0
    else:
        run.validations_without_gain += 1
        if cfg.patience and run.validations_without_gain >= cfg.patience:
            run.stopped_early = True


def _finish(run: _Run) -> TrainResult:
    """Load the best weights (rank 0's, on every rank), put the model in eval mode, and report."""
    model = run.model
    if run.best is not None:
        model.load_state_dict(run.best)
    if dist.is_initialized():
        # Only rank 0 validates and so knows the best weights: every rank returns those.
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, 0)
    model.eval()
    return TrainResult(model, run.state, time.time() - run.t0, run.stopped_early)


def _build_objective(objective: Objective | None, model: SamModel, cfg: TrainConfig, seed: int) -> torch.nn.Module:
    """The objective module: the default, a given module, or a factory's product."""
    if objective is None:
        return SelfPromptObjective(model, cfg.objective, seed=seed)
    if isinstance(objective, torch.nn.Module):
        return objective
    built = objective(model, seed)
    if not isinstance(built, torch.nn.Module):
        raise TypeError(f"the objective factory returned {type(built).__name__}, not a torch.nn.Module")
    return built


def _cached_step(model: SamModel, runner: torch.nn.Module, exs, rng, cache: dict, cfg: TrainConfig, device,
                 call_kwargs: dict | None = None) -> dict:
    from ..models.sam_model import ImageFeatures

    feats, labels, valid = [], [], []
    aug = cfg.augment
    flips = 2 if aug is not None and aug.flip else 1
    turns = 4 if aug is not None and aug.rot90 else 1
    for ex in exs:
        # Each variant number is one distinct element of the dihedral group, so
        # every variant is encoded once and all of them occur.
        variant = rng.randrange(flips * turns)
        flip, k = variant >= turns, variant % turns
        sample = prepare_sample(_dihedral_variant(ex, flip, k), model.img_size, preprocessing=model_preprocessing(model))
        # Keyed by the image array (features depend on nothing else), which the entry also holds,
        # so a cache kept across calls can never match a new array that reuses a freed id.
        key = (id(ex.image), variant)
        hit = cache.get(key)
        if hit is None or hit[0] is not ex.image:
            with torch.no_grad():
                hit = cache[key] = (ex.image, model.encode(model.normalize_pixels(sample.image[None].to(device))))
        feats.append(hit[1])
        labels.append(sample.labels)
        valid.append(sample.valid)
    features = ImageFeatures(
        torch.cat([f.embeddings for f in feats]),
        None if feats[0].hires is None else torch.cat([f.hires for f in feats]),
    )
    # Through ``runner`` (the DDP wrapper when distributed) so gradients are all-reduced.
    return runner(None, torch.stack(labels).to(device), torch.stack(valid).to(device), features=features, **(call_kwargs or {}))


def _dihedral_variant(ex: Example, flip: bool, k: int) -> Example:
    """An example flipped horizontally (``flip``), then turned by ``k`` quarter turns."""
    image, labels = ex.image, ex.labels
    if flip:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if k:
        image, labels = np.rot90(image, k, (0, 1)), np.rot90(labels, k, (0, 1))
    return Example(np.ascontiguousarray(image), np.ascontiguousarray(labels), ex.domain, ex.stem)
