"""Per-widget session state (deliberately not a module-level singleton).

One :class:`Session` per annotator widget holds the loaded model and its predictor,
the project folder with its annotation store and model versions, the current
:class:`~napari_samsp._ui.workspace.Workspace` (image + companion layers), the
object being edited, the undo history and the work queue.

Project folder layout::

    <project>/store/     the annotation store (a training folder in the data layout)
    <project>/models/    fine-tuned model versions
    <project>/cache/     image embeddings
"""

from __future__ import annotations

import os
from pathlib import Path

from psygnal import Signal

from ..interactive import LabelsHistory
from .embeddings import PlaneEmbeddings
from .notify import Messenger

DEFAULT_PROJECT = Path.home() / "napari-samsp-project"


def default_project() -> Path:
    """``$SAMSP_PROJECT`` or ``~/napari-samsp-project``."""
    env = os.environ.get("SAMSP_PROJECT")
    return Path(env).expanduser() if env else DEFAULT_PROJECT


class Session:
    """State shared by the panels of one widget."""

    model_changed = Signal(object)  # LoadedModel | None
    project_changed = Signal(object)  # Path
    store_changed = Signal()
    workspace_changed = Signal(object)  # Workspace | None

    def __init__(self, viewer, project: str | Path | None = None) -> None:
        self.viewer = viewer
        self.messages = Messenger()
        self.project = Path(project).expanduser() if project else default_project()
        self.device = "auto"
        self.base_target: tuple | None = None  # (name_or_path, trust) of the user's base model
        self.loaded = None  # LoadedModel
        self.predictor = None  # Predictor
        self.embeddings = PlaneEmbeddings()  # by (workspace key, z[, window]), for the current predictor
        self.workspace = None  # Workspace
        self.editor = None  # interactive.ObjectEditor
        self.editor_key: tuple | None = None
        self.history = LabelsHistory()
        self.queue = None  # work_queue.WorkQueue
        self.tasks = None  # TaskRunner, set by the widget (needs Qt)
        self.edits = None  # edits.EditTracker, set by the widget
        self._store = None
        self._versions = None

    # -- project -------------------------------------------------------------------
    def set_project(self, folder: str | Path) -> None:
        path = Path(folder).expanduser()
        if path.exists() and not path.is_dir():
            from ..errors import DataLayoutError

            raise DataLayoutError(f"project folder {path} is a file")
        self.project = path
        self._store = None
        self._versions = None
        self.project_changed.emit(path)
        self.store_changed.emit()

    @property
    def store_dir(self) -> Path:
        return self.project / "store"

    @property
    def models_dir(self) -> Path:
        return self.project / "models"

    @property
    def cache_dir(self) -> Path:
        return self.project / "cache"

    @property
    def store(self):
        """The project's AnnotationStore (created on first use)."""
        if self._store is None or self._store.root != self.store_dir:
            from ..store import AnnotationStore

            self._store = AnnotationStore(self.store_dir)
        return self._store

    def store_count(self) -> int:
        """Corrected images in the store, without creating it."""
        if not (self.store_dir / "manifest.jsonl").exists():
            return 0
        try:
            return self.store.corrected_count()
        except Exception:
            return 0

    @property
    def versions(self):
        """The project's ModelVersions (created on first use)."""
        from ..finetune.versions import ModelVersions

        if self._versions is None:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            self._versions = ModelVersions(self.models_dir)
        return self._versions

    # -- model ---------------------------------------------------------------------
    def set_model(self, loaded, predictor) -> None:
        self.loaded = loaded
        self.predictor = predictor
        self.embeddings.clear()
        self.reset_editor()
        self.model_changed.emit(loaded)

    @property
    def model_id(self) -> str | None:
        return None if self.loaded is None else self.loaded.model_id

    @property
    def default_mode(self) -> str:
        from ..models.card import DEFAULT_MODE

        return DEFAULT_MODE if self.loaded is None else self.loaded.model_card.mode

    @property
    def official_weights(self) -> bool:
        """Official SAM weights, not fine-tuned (they decode single clicks best with multimask output)."""
        if self.loaded is None:
            return False
        card = self.loaded.model_card
        return card.official and not card.steps and not self.loaded.is_random

    @property
    def num_passes(self) -> int | None:
        return None if self.loaded is None else self.loaded.model_card.num_passes

    # -- editing -------------------------------------------------------------------
    def reset_editor(self) -> None:
        self.editor = None
        self.editor_key = None

    def set_workspace(self, workspace) -> None:
        if self.workspace is workspace:
            return
        if self.workspace is not None:
            self.workspace.disconnect()
        self.workspace = workspace
        self.reset_editor()
        self.workspace_changed.emit(workspace)
