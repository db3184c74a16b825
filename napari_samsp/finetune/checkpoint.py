"""Reading the training checkpoints that :func:`napari_samsp.finetune.loop.train` writes.

The writer (``loop._save_checkpoint``) stores one ``torch.save`` dict of tensors and plain
values: ``{"model": state_dict, "optimizer": state_dict, "best": state_dict | None,
"state": {"step", "best_val", "best_step", "history"}}``. ``training/train.py`` puts a
``config.json`` next to it: ``{"config": recipe, "train": TrainConfig, "preprocessing": name}``.

:func:`load_checkpoint` reads both with ``torch.load(weights_only=True)`` (no unpickling of
arbitrary objects) and returns a :class:`TrainingCheckpoint` value: the chosen weights, the
run's config and the step. ``TrainingCheckpoint.build_model`` turns it into a ready model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..errors import WeightsError

Which = Literal["best", "model"]
DEFAULT_MODEL = "samunet_tiny"  # the architecture train.py builds when a recipe names none


@dataclass(frozen=True)
class TrainingCheckpoint:
    """One training checkpoint, read.

    ``weights`` is a state dict (name -> tensor on CPU) for the model, ``which`` says which
    weights those are ("best": the best validation step's; "model": the last step's).
    ``run_config`` is the recipe from the run folder's ``config.json`` (``{}`` without one).
    """

    path: Path
    weights: dict[str, torch.Tensor]
    which: Which
    step: int
    best_step: int | None
    best_val: float | None
    history: list[dict] = field(default_factory=list)
    run_config: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    preprocessing: str | None = None  # None: no config.json, keep the architecture's default

    @property
    def model_name(self) -> str:
        """The architecture name from the run's recipe (``samunet_tiny`` when it names none)."""
        return str(self.run_config.get("model", DEFAULT_MODEL))

    @property
    def mode(self) -> str:
        return str(self.run_config.get("mode", "semantic"))

    @property
    def num_passes(self) -> int:
        return int(self.run_config.get("objective", {}).get("num_passes", 2))

    @property
    def model_id(self) -> str:
        """A short name for reports: ``ckpt-<run folder>-<which>-<step of those weights>``."""
        step = self.best_step if self.which == "best" else self.step
        return f"ckpt-{self.path.parent.name}-{self.which}-{step}"

    def card(self) -> dict:
        """The card fields a checkpoint knows: mode, passes, preprocessing and where it came from."""
        card: dict = {"mode": self.mode, "num_passes": self.num_passes}
        if self.preprocessing is not None:
            card["preprocessing"] = self.preprocessing
        card["checkpoint"] = {"path": str(self.path), "weights": self.which, "step": self.step,
                              "best_step": self.best_step, "best_val": self.best_val}
        return card

    def build_model(self, config_name: str | None = None) -> torch.nn.Module:
        """A model of architecture ``config_name`` (default :attr:`model_name`) holding ``weights``, in eval mode."""
        from ..models import build_model
        from ..models.build import get_config
        from ..transforms import set_model_preprocessing

        model = build_model(get_config(config_name or self.model_name))
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise WeightsError(f"{self.path}: weights do not fit {config_name or self.model_name!r} ({first})") from exc
        if self.preprocessing is not None:
            set_model_preprocessing(model, self.preprocessing)
        return model.eval()


def load_checkpoint(path: str | Path, which: Which = "best") -> TrainingCheckpoint:
    """Read a ``checkpoint.pt`` written by the training loop, and its run's ``config.json``.

    ``which="best"`` falls back to the last step's weights when the run has not validated
    yet (``best`` is ``None``); ``TrainingCheckpoint.which`` tells which ones came back.
    Raises :class:`WeightsError` for a missing file or one that is not a training checkpoint.
    """
    from ..transforms import LEGACY_PREPROCESSING

    path = Path(path)
    if which not in ("best", "model"):
        raise ValueError(f"which must be 'best' or 'model', not {which!r}")
    if not path.is_file():
        raise WeightsError(f"{path}: no such training checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a torn or foreign file: report one
        raise WeightsError(f"{path}: not a readable training checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("state"), dict):
        raise WeightsError(f"{path}: not a training checkpoint (expected 'model' and 'state' entries)")
    weights = ckpt.get(which)
    used: Which = which
    if weights is None:
        weights, used = ckpt["model"], "model"
    state = ckpt["state"]
    run: dict = {}
    run_file = path.parent / "config.json"
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{run_file}: unreadable run config ({exc})") from exc
    return TrainingCheckpoint(
        path=path, weights=weights, which=used, step=int(state.get("step", 0)),
        best_step=state.get("best_step"), best_val=state.get("best_val"), history=list(state.get("history", [])),
        run_config=dict(run.get("config", {})), train_config=dict(run.get("train", {})),
        # runs from before train.py recorded the preprocessing used the legacy samsp-v1
        preprocessing=(run.get("preprocessing") or LEGACY_PREPROCESSING) if run else None,
    )
