"""Fine-tuning as one call for the CLI and the plugin.

:func:`finetune_model` trains a *copy* of the base model, so a failed, cancelled
or diverged run never touches the model in use. :func:`run_finetune` adds the
project bookkeeping: the result becomes a new model version and is activated.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..autoseg import finetuned_mode
from ..errors import DataLayoutError
from ..io import list_pairs, read_splits, split_pairs
from ..models.checkpoints import LoadedModel
from ..models.lora import merge_lora
from ..models.sam_model import SamModel
from .data import load_examples
from .loop import Callbacks, TrainConfig, train, validate
from .objective import ObjectiveConfig
from .versions import ModelVersions, VersionInfo

log = logging.getLogger(__name__)


def default_finetune_config(steps: int = 300) -> TrainConfig:
    """What the plugin and ``samsp finetune`` use unless told otherwise.

    LoRA on the encoder plus the prompt encoder, mask decoder and SAM-UNet branch:
    enough capacity to adapt to a new modality from ~10 images, small enough
    to run in minutes on a CPU. Validation at the start keeps the base weights
    unless training beats them by more than ``min_gain`` (0.01 Dice).
    """
    return TrainConfig(
        steps=steps,
        batch_size=4,
        lr=1e-4,
        warmup_steps=min(20, steps // 5 + 1),
        trainable=("lora", "prompt_encoder", "mask_decoder", "unet"),
        lora_rank=4,
        # focal_alpha -1 as the default model was trained: alpha 0.25 weighs foreground
        # pixels 1:3 and drove fine-tuning on small objects (polyps) to empty masks.
        # num_passes: the base model's card's (set in finetune_model)
        objective=ObjectiveConfig(prompts_per_image=3, click_iterations=1, focal_alpha=-1),
        val_every=max(10, steps // 6),
        checkpoint_every=10**9,
        validate_at_start=True,
        # measured: on fetal head (N = 100) a step 0.001 "better" on the 40 selection
        # images was 0.015 worse on 60 held-out ones (docs/BENCHMARKS.md, the loop)
        min_gain=0.01,
    )


@dataclass
class FineTuneResult:
    model: SamModel
    card: dict
    before: dict[str, float]
    after: dict[str, float]
    kept_base: bool = False  # no trained step beat the base by ``min_gain``: the weights are the base's


@dataclass
class FineTuneOutcome:
    version: VersionInfo | None  # None: the base was kept and ``version_if_kept`` was False
    before: dict[str, float]
    after: dict[str, float]
    kept_base: bool = False


def load_training_data(data_dirs: Sequence[str | Path], val_fraction: float = 0.2, max_side: int = 512):
    """Examples from folders in the data layout: (train, val, counts per folder).

    Each folder's ``splits.json`` decides when present; otherwise a deterministic
    split by stem. With a single pair, it is used for training and validation both.
    """
    train_ex, val_ex, counts = [], [], {}
    for d in data_dirs:
        root = Path(d)
        pairs = list_pairs(root)
        tr, va = split_pairs(pairs, read_splits(root), val_fraction=val_fraction)
        if not tr and va:
            tr, va = va[1:], va[:1]
        if not va and len(tr) > 1:
            tr, va = tr[1:], tr[:1]
        train_ex += load_examples(tr or va, root.name, max_side)
        val_ex += load_examples(va or tr, root.name, max_side)
        counts[root.name] = len(tr)
    if not train_ex:
        raise DataLayoutError("no training pairs found in " + ", ".join(str(d) for d in data_dirs))
    return train_ex, val_ex, counts


def finetune_model(
    base: LoadedModel,
    data_dirs: Sequence[str | Path],
    config: TrainConfig | None = None,
    callbacks: Callbacks | None = None,
    val_fraction: float = 0.2,
) -> FineTuneResult:
    """Fine-tune a copy of ``base.model`` on the folders; the base model is not modified."""
    cfg = config or default_finetune_config()
    train_ex, val_ex, counts = load_training_data(data_dirs, val_fraction)
    base_card = base.model_card
    num_passes = base_card.num_passes
    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, num_passes=num_passes))
    before = validate(base.model, val_ex, num_passes)
    device = next(base.model.parameters()).device
    model = copy.deepcopy(base.model)
    result = train(model, train_ex, val_ex, cfg, callbacks, device=device)
    merge_lora(result.model)
    after = validate(result.model, val_ex, num_passes)
    kept = bool(cfg.validate_at_start and result.state.best_step == 0)
    card = base_card.child(
        parent=base_card.version or base.source,
        mode=finetuned_mode(base_card, any(int(ex.labels.max(initial=0)) > 1 for ex in train_ex), kept),
        training_data=[{"name": k, "count": v} for k, v in counts.items()],
        steps=result.state.step,
        metrics={"before": before, "after": after, "best_step": result.state.best_step, "kept_base": kept},
        finetune={"trainable": list(cfg.trainable), "lr": cfg.lr, "batch_size": cfg.batch_size},
    ).to_dict()
    return FineTuneResult(result.model.eval(), card, before, after, kept)


def run_finetune(
    base: LoadedModel,
    data_dirs: Sequence[str | Path],
    versions: ModelVersions,
    config: TrainConfig | None = None,
    callbacks: Callbacks | None = None,
    version_if_kept: bool = True,
    val_fraction: float = 0.2,
) -> FineTuneOutcome:
    """Fine-tune, save the result as a new version and activate it.

    ``version_if_kept=False``: when no trained step beat the base (the result holds the base's
    weights), add no version and leave the active one as it is (``outcome.version`` is None).
    ``val_fraction``: as in :func:`finetune_model`.
    """
    result = finetune_model(base, data_dirs, config, callbacks, val_fraction=val_fraction)
    if result.kept_base and not version_if_kept:
        return FineTuneOutcome(None, result.before, result.after, True)
    info = versions.add_active(result.model, result.card)
    return FineTuneOutcome(info, result.before, result.after, result.kept_base)
