"""A project: the folder the plugin and ``samsp --project`` share (Qt-free).

Layout of ``root`` (the plugin's since its first release; existing projects open unchanged)::

    <root>/store/     the annotation store (a training folder in the data layout)
    <root>/models/    fine-tuned model versions (versions/<NNN>-<id8>.safetensors, active.json)
    <root>/cache/     image embeddings (one folder per model id)

:class:`Project` owns that layout and the steps that read or change it: the store, the
versions, loading the active model, the one place a :class:`~napari_samsp.predictor.Predictor`
is built, fine-tuning and self-improvement (each adds a version and activates it) and the
ranked work queue. Methods return values; the plugin runs them in its workers, the CLI
calls them directly. Nothing is created on disk until something is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataLayoutError

if TYPE_CHECKING:  # heavy (torch) imports only where they are used
    from .finetune.job import FineTuneOutcome
    from .finetune.loop import Callbacks, TrainConfig
    from .finetune.versions import ModelVersions, VersionInfo
    from .models.checkpoints import LoadedModel
    from .predictor import Predictor
    from .reward.improve import ImproveConfig, ImprovementReport
    from .store import AnnotationStore
    from .work_queue import WorkQueue

__all__ = [
    "CACHE_DIR", "DEFAULT_PROJECT", "ImproveOutcome", "MODELS_DIR", "Project", "STORE_DIR",
    "default_project", "parent_chain", "version_weights",
]

STORE_DIR = "store"
MODELS_DIR = "models"
CACHE_DIR = "cache"
DEFAULT_PROJECT = Path.home() / "napari-samsp-project"
MEMORY_EMBEDDINGS = 8  # images whose features a project's predictor keeps in memory


def default_project() -> Path:
    """``$SAMSP_PROJECT`` or ``~/napari-samsp-project`` (the plugin's default project folder)."""
    env = os.environ.get("SAMSP_PROJECT")
    return Path(env).expanduser() if env else DEFAULT_PROJECT


def version_weights(path: str | Path) -> Path:
    """The weights file of a model version (a file, or a folder holding one .safetensors)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if files:
            return files[0]
    return path


def parent_chain(card: dict, known: dict[str, tuple[str, dict]], limit: int = 8) -> list[str]:
    """Names of the models ``card`` descends from, nearest first.

    ``known``: model version id -> (readable name, its card) for the models we can look up (the
    project's versions, the embedded default); an unknown parent is shown by its id's first 8 characters.
    """
    chain: list[str] = []
    seen: set[str] = set()
    pid = card.get("parent")
    while pid and str(pid) not in seen and len(chain) < limit:
        seen.add(str(pid))
        name, parent_card = known.get(str(pid), (None, None))
        chain.append(name or str(pid)[:8])
        pid = (parent_card or {}).get("parent")
    return chain


@dataclass(frozen=True)
class ImproveOutcome:
    """What :meth:`Project.self_improve` did: the report, and the new active version (None: no round helped)."""

    report: ImprovementReport
    version: VersionInfo | None


class Project:
    """One project folder: store, model versions, embedding cache, and what works on them.

    Args:
        root: the project folder (created when something is first written into it).

    Raises:
        DataLayoutError: ``root`` is an existing file.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise DataLayoutError(f"project folder {path} is a file")
        self.root = path
        self._store: AnnotationStore | None = None
        self._versions: ModelVersions | None = None

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    def __fspath__(self) -> str:
        return str(self.root)

    # -- layout -------------------------------------------------------------------------
    @property
    def store_dir(self) -> Path:
        return self.root / STORE_DIR

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS_DIR

    @property
    def cache_dir(self) -> Path:
        return self.root / CACHE_DIR

    @property
    def store(self) -> AnnotationStore:
        """The annotation store (its folder is created on first use)."""
        if self._store is None:
            from .store import AnnotationStore

            self._store = AnnotationStore(self.store_dir)
        return self._store

    def store_count(self) -> int:
        """Corrected images in the store, without creating it (0 when it cannot be read)."""
        if not (self.store_dir / "manifest.jsonl").exists():
            return 0
        try:
            return self.store.corrected_count()
        except Exception:  # an unreadable store counts as empty here; reading it reports why
            return 0

    @property
    def versions(self) -> ModelVersions:
        """The model versions (``models/`` is created on first use)."""
        if self._versions is None:
            from .finetune.versions import ModelVersions

            self._versions = ModelVersions(self.models_dir)
        return self._versions

    def has_versions(self) -> bool:
        """Whether a versions folder exists (asked before touching the disk)."""
        return (self.models_dir / "versions").is_dir()

    def active_version(self) -> VersionInfo | None:
        """The active version, or None when the base model is active (creates nothing)."""
        return self.versions.active() if self.has_versions() else None

    def can_roll_back(self) -> bool:
        """Whether :meth:`ModelVersions.rollback` has a previous choice to return to."""
        if not self.has_versions():
            return False
        return self.versions.active() is not None or bool(self.versions.previous())

    # -- models -------------------------------------------------------------------------
    def load(self, target: str | os.PathLike[str] | None = None, device: str = "auto",
             trust: bool = False) -> LoadedModel:
        """Any model, as :func:`~napari_samsp.models.checkpoints.load_model` loads it (None: the embedded default)."""
        from .models.checkpoints import load_model

        return load_model(None if target is None else str(target), device=device, trust=trust)

    def load_version(self, info: VersionInfo, device: str = "auto") -> LoadedModel:
        """One of the project's versions."""
        return self.load(version_weights(info.path), device=device)

    def load_active(self, device: str = "auto", base: str | os.PathLike[str] | None = None,
                    trust: bool = False) -> LoadedModel:
        """The active version; with none active, the base model ``base`` (None: the embedded default)."""
        info = self.active_version()
        return self.load(base, device, trust) if info is None else self.load_version(info, device)

    def predictor(self, loaded: LoadedModel) -> Predictor:
        """The project's predictor for ``loaded``: :meth:`Predictor.for_loaded` (the card's mirror views
        for prompts) with the project's embedding cache."""
        from .predictor import EmbeddingCache, Predictor

        cache = EmbeddingCache(self.cache_dir, max_memory_entries=MEMORY_EMBEDDINGS)
        return Predictor.for_loaded(loaded, cache)

    def lineage(self, card: dict) -> list[str]:
        """Readable names of the models ``card`` descends from, nearest first (see :func:`parent_chain`)."""
        return parent_chain(card or {}, self._known_models())

    def _known_models(self) -> dict[str, tuple[str, dict]]:
        """The embedded default and the project's versions, by model version id."""
        known: dict[str, tuple[str, dict]] = {}
        default_card = Path(__file__).resolve().parent / "weights" / "default.json"
        try:
            card = json.loads(default_card.read_text())
            if card.get("version"):
                known[str(card["version"])] = ("embedded default", card)
        except (OSError, ValueError):
            pass
        if self.has_versions():
            for info in self.versions.list():
                known[str(info.version)] = (f"version {info.path.stem}", info.card)
        return known

    # -- learning -----------------------------------------------------------------------
    def finetune(self, base: LoadedModel, config: TrainConfig | None = None, callbacks: Callbacks | None = None,
                 *, data_dirs: Sequence[str | os.PathLike[str]] | None = None, val_fraction: float = 0.2,
                 version_if_kept: bool = True) -> FineTuneOutcome:
        """Fine-tune a copy of ``base`` (default data: the project's store); the result becomes the active version.

        ``version_if_kept=False``: when no trained step beat the base, add no version (``outcome.version`` None).
        """
        from .finetune.job import run_finetune

        dirs = [self.store_dir] if not data_dirs else [Path(d) for d in data_dirs]
        return run_finetune(base, dirs, self.versions, config, callbacks, version_if_kept=version_if_kept,
                            val_fraction=val_fraction)

    def self_improve(self, base: LoadedModel, unlabeled: Sequence[np.ndarray | str | Path], rounds: int = 3,
                     config: ImproveConfig | None = None, *,
                     progress: Callable[[str, int, int], None] | None = None,
                     should_cancel: Callable[[], bool] | None = None) -> ImproveOutcome:
        """Self-improvement rounds anchored on the project's store; a kept round becomes the active version.

        ``unlabeled``: images (arrays or paths) without masks. See :func:`napari_samsp.reward.improve.self_improve`.
        """
        from .reward.improve import self_improve

        report = self_improve(base, unlabeled, [self.store_dir], rounds=rounds, config=config,
                              progress=progress, should_cancel=should_cancel)
        version = self.versions.add_active(report.model, report.card) if report.improved else None
        return ImproveOutcome(report, version)

    def not_in_store(self, paths: Sequence[str | Path]) -> list[Path]:
        """``paths`` whose image was not sent to the store yet (by the source path the store recorded)."""
        sources: set[str] = set()
        if self.store_count():
            sources = {str(e.source) for e in self.store.entries() if e.source}
        return [Path(p) for p in paths if str(p) not in sources]

    # -- the ranked queue ---------------------------------------------------------------
    def rank_options(self, card: Any = None, mode: str | None = None, store: str | Path | None = None) -> dict:
        """:func:`~napari_samsp.work_queue.rank_options` calibrated on ``store`` (default: the project's
        store when it holds corrected masks, else none)."""
        from .work_queue import rank_options

        if store is None and self.store_count():
            store = self.store_dir
        return rank_options(card, mode, store)

    def rank(self, predictor: Predictor, paths: Sequence[str | Path], card: Any = None,
             mode: str | None = None, store: str | Path | None = None) -> Iterator[dict]:
        """``samsp rank`` rows for ``paths``, lowest expected Dice first (the plugin's ranked queue order)."""
        from .reward import rank_paths

        return rank_paths(predictor, [str(p) for p in paths], **self.rank_options(card, mode, store))

    def ranked_queue(self, folder: str | Path, predictor: Predictor, card: Any = None, mode: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> WorkQueue:
        """The images of ``folder`` as a work queue in :meth:`rank` order."""
        from .work_queue import WorkQueue

        kwargs = self.rank_options(card, mode)
        if progress is not None:
            kwargs["progress"] = progress
        return WorkQueue.from_folder(folder, predictor=predictor, **kwargs)
