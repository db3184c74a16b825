"""Per-widget session state (deliberately not a module-level singleton).

One :class:`Session` per annotator widget holds the loaded model and its predictor,
the :class:`~napari_samsp.project.Project` (store, model versions, embedding cache: the
layout is the project's, shared with ``samsp --project``), the current
:class:`~napari_samsp._ui.workspace.Workspace` (image + companion layers), the
object being edited, the undo history and the work queue.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal

from ..interactive import LabelsHistory
from ..project import Project, default_project
from .embeddings import PlaneEmbeddings
from .notify import Messenger

__all__ = ["Session", "default_project"]


class Session:
    """State shared by the panels of one widget."""

    model_changed = Signal(object)  # LoadedModel | None
    project_changed = Signal(object)  # Path
    store_changed = Signal()
    workspace_changed = Signal(object)  # Workspace | None

    def __init__(self, viewer, project: str | Path | None = None) -> None:
        self.viewer = viewer
        self.messages = Messenger()
        self.project = Project(project if project else default_project())
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

    # -- project -------------------------------------------------------------------
    def set_project(self, folder: str | Path) -> None:
        """Switch to the project in ``folder``; DataLayoutError when it is a file."""
        self.project = Project(folder)
        self.project_changed.emit(self.project.root)
        self.store_changed.emit()

    @property
    def store(self):
        """The project's AnnotationStore (a shortcut for ``project.store``)."""
        return self.project.store

    def store_count(self) -> int:
        """Corrected images in the project's store, without creating it."""
        return self.project.store_count()

    @property
    def versions(self):
        """The project's ModelVersions (a shortcut for ``project.versions``)."""
        return self.project.versions

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
