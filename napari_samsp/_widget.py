"""The SAM-SP annotator dock widget: a thin shell composing one panel per responsibility.

Panels (``napari_samsp/_ui``): project folder, model, image + auto-segment, correct + send,
fine-tune + versions, queue + export. Each widget instance owns its own
:class:`~napari_samsp._ui.state.Session` (no global state), so two viewers (or two
widgets) never share a model, an undo history or a project by accident.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._ui.compat import guard_triton

guard_triton()  # before anything imports torchvision (see compat.guard_triton)

from ._ui.correct_panel import CorrectPanel  # noqa: E402
from ._ui.counts import CountsLabel  # noqa: E402
from ._ui.edits import EditTracker  # noqa: E402
from ._ui.model_panel import ModelPanel  # noqa: E402
from ._ui.queue_panel import QueuePanel  # noqa: E402
from ._ui.segment_panel import SegmentPanel  # noqa: E402
from ._ui.state import Session  # noqa: E402
from ._ui.tasks import TaskRunner  # noqa: E402
from ._ui.train_panel import TrainPanel  # noqa: E402

# key -> (what it does, widget method name); documented in docs/PLUGIN.md
SHORTCUTS: dict[str, tuple[str, str]] = {
    "T": ("toggle the sign of the next prompt point (+/-)", "toggle_sign"),
    "Shift-S": ("auto-segment the current image / slice", "segment"),
    "Shift-C": ("commit the object, start a new label id", "commit_object"),
    "Shift-X": ("clear the prompts", "clear_prompts"),
    "Shift-U": ("undo the last model edit", "undo"),
    "Shift-R": ("propagate the object through the stack (3D)", "propagate"),
    "Shift-D": ("send corrections to the store (done)", "send_corrections"),
    "Shift-N": ("next image of the queue", "next_image"),
    "Shift-Enter": ("accept the labels as they are: send them and open the next image", "accept_and_next"),
}


def _section(title: str, panel: QWidget, expanded: bool = True) -> QWidget:
    from superqt import QCollapsible

    box = QCollapsible(title)
    box.setDuration(0)
    box.addWidget(panel)
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    return box


def _shutdown(session: Session, viewer, keys: list[str]) -> None:
    """Stop background work and unbind our keys (the widget or the viewer is going away)."""
    if session.tasks is not None:
        session.tasks.shutdown()
    for key in keys:
        viewer.bind_key(key, None)  # unbinding a key that is not bound does nothing


class SamspWidget(QWidget):
    """SAM-SP annotator: self-prompted segmentation, corrections, fine-tuning, queue, export.

    Args:
        napari_viewer: the viewer (napari passes it).
        project: project folder (default ``$SAMSP_PROJECT`` or ``~/napari-samsp-project``).
    """

    def __init__(self, napari_viewer, project: str | Path | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session(napari_viewer, project)
        self.session.tasks = TaskRunner(self.session.messages, self)
        self.session.edits = EditTracker(self.session)

        self.model_panel = ModelPanel(self.session)
        self.segment_panel = SegmentPanel(self.session)
        self.correct_panel = CorrectPanel(self.session, self.segment_panel)
        self.train_panel = TrainPanel(self.session, resegment=self.segment_panel.after_model_change)
        self.queue_panel = QueuePanel(self.session, self.segment_panel)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.addLayout(self._project_row())
        body = QWidget()
        col = QVBoxLayout(body)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(2)
        self.sections = {  # title -> collapsible section (expand() is what a click on its header does)
            "model": _section("Model", self.model_panel),
            "segment": _section("Image && auto-segment", self.segment_panel),
            "correct": _section("Correct && send", self.correct_panel),
            "train": _section("Fine-tune && versions", self.train_panel, expanded=False),
            "queue": _section("Queue && export", self.queue_panel, expanded=False),
        }
        for section in self.sections.values():
            col.addWidget(section)
        col.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        outer.addWidget(scroll, 1)

        self.counts = CountsLabel(self.session, self.segment_panel.mode)
        outer.addWidget(self.counts)
        self.progress = QProgressBar()
        self.progress.setToolTip("Progress of the running segmentation / embedding / ranking (Cancel stops it)")
        self.progress.setTextVisible(True)
        self.progress.setMaximumHeight(14)
        self.progress.hide()
        outer.addWidget(self.progress)
        self._watched_task = None
        self._shown_ws = None

        status_row = QHBoxLayout()
        self.status = QLabel("Load a model to start.")
        self.status.setWordWrap(True)
        self.status.setToolTip("What the annotator did last")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running segmentation / embedding / propagation")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.session.tasks.cancel("model"))
        status_row.addWidget(self.status, 1)
        status_row.addWidget(self.cancel_button)
        outer.addLayout(status_row)
        self.setMinimumWidth(320)

        self.session.messages.listeners.append(self._on_message)
        self.session.tasks.changed.connect(self._on_tasks)
        self.session.workspace_changed.connect(self._on_workspace)
        self._bind_keys()
        self.destroyed.connect(lambda *_, s=self.session, v=self.viewer, k=list(SHORTCUTS): _shutdown(s, v, k))

    # -- layout pieces ----------------------------------------------------------------------
    def _project_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Project"))
        self.project_edit = QLineEdit(str(self.session.project))
        self.project_edit.setToolTip(
            "Project folder: store/ holds the corrected images (training set), models/ the fine-tuned "
            "versions, cache/ the image embeddings"
        )
        self.project_edit.editingFinished.connect(lambda: self.set_project(self.project_edit.text()))
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose the project folder")
        browse.clicked.connect(self._browse_project)
        row.addWidget(self.project_edit, 1)
        row.addWidget(browse)
        return row

    def _browse_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder", str(self.session.project))
        if folder:
            self.set_project(folder)

    def _bind_keys(self) -> None:
        for key, (_, method) in SHORTCUTS.items():
            self.viewer.bind_key(key, lambda viewer, m=method: getattr(self, m)(), overwrite=True)

    # -- reactions ----------------------------------------------------------------------------
    def _on_message(self, level: str, text: str) -> None:
        color = {"error": "#ff6b6b", "warning": "#ffb86c"}.get(level)
        self.status.setStyleSheet(f"color: {color}" if color else "")
        self.status.setText(text)
        try:
            self.viewer.status = text  # napari's status bar too (no toast over the canvas)
        except Exception:  # noqa: BLE001 - a copy for the status bar only: the panel already shows the text
            pass

    def _on_tasks(self) -> None:
        busy = self.session.tasks.busy("model")
        self.cancel_button.setEnabled(busy)
        task = self.session.tasks.tasks.get("model")
        if task is None:
            self.progress.hide()
            self._watched_task = None
            return
        if task is not self._watched_task:
            self._watched_task = task
            self.progress.setRange(0, 0)  # busy until the first report
            self.progress.setFormat(task.desc[:60] + " %p%")
            task.progress_listeners.append(self._on_progress)
            self.progress.show()

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))

    def _on_workspace(self, ws) -> None:
        if ws is not None:
            self.correct_panel.ensure_layers()
        self._show_only(ws)

    def _show_only(self, ws) -> None:
        """One image and its layers at a time: hide the previous workspace's image, labels,
        prompts, boxes and preview; show the current ones."""
        previous, self._shown_ws = self._shown_ws, ws
        layers = self.viewer.layers
        if previous is not None and previous is not ws and (ws is None or previous.image is not ws.image):
            preview = self.segment_panel.preview_layer(previous)
            for layer in [previous.image, *previous.companions(), preview]:
                if layer is not None and layer in layers:
                    layer.visible = False
        if ws is not None:
            for layer in [ws.image, *ws.companions()]:
                # napari resets a layer's mode to pan_zoom whenever `visible` is set, even to its
                # current value: touch only hidden layers, then give the prompt layers their modes back
                if layer in layers and not layer.visible:
                    layer.visible = True
            ws.restore_prompt_modes()

    # -- public actions (buttons, keys and tests all come through here) ----------------------
    def set_project(self, folder: str | Path) -> None:
        try:
            self.session.set_project(folder)
        except Exception as exc:  # noqa: BLE001 - a bad folder (SamspError, OSError) or a failing panel listener: one line
            self.session.messages.exception(exc, "project folder")
            return
        self.project_edit.setText(str(self.session.project))
        self.session.messages.status(f"project: {self.session.project}")

    def load_model(self, source: str | None = "default", device: str | None = None, trust: bool | None = None):
        """Load ``source``: ``default``, a built-in config name, ``active version`` or a weights path."""
        return self.model_panel.load(source, device=device, trust=trust)

    def use_layer(self, layer):
        return self.segment_panel.use_layer(layer)

    def segment(self):
        return self.segment_panel.segment_current()

    def segment_all(self):
        return self.segment_panel.segment_all()

    def toggle_sign(self) -> None:
        self.correct_panel.toggle_sign()

    def add_point(self, row: float, col: float, positive: bool = True, z: int | None = None) -> None:
        """Add a prompt point as a click would (re-decodes the selected object)."""
        ws = self.session.workspace or self.segment_panel.workspace()
        if ws is not None:
            self.correct_panel.set_sign(positive)
            ws.add_point(row, col, positive, z)

    def commit_object(self) -> None:
        self.correct_panel.commit_object()

    def clear_prompts(self) -> None:
        self.correct_panel.clear_prompts()

    def undo(self) -> bool:
        return self.correct_panel.undo()

    def propagate(self):
        return self.correct_panel.propagate()

    def send_corrections(self, all_slices: bool | None = None):
        return self.correct_panel.send_corrections(all_slices)

    def start_finetune(self, steps: int | None = None):
        return self.train_panel.start_finetune(steps)

    def self_improve(self, rounds: int | None = None, steps: int | None = None):
        """CSR-style self-improvement on the queue's unlabeled images (or the current image), in a worker."""
        return self.train_panel.start_self_improve(rounds, steps)

    def cancel_finetune(self) -> None:
        self.train_panel.cancel()

    def rollback(self):
        return self.train_panel.rollback()

    def open_folder(self, folder: str | Path, rank: bool | None = None):
        return self.queue_panel.open_folder(folder, rank)

    def next_image(self):
        return self.queue_panel.next_image()

    def accept_and_next(self):
        """Keep the labels as proposed (or as corrected): send them, then open the next queue image."""
        if self.send_corrections() is None:
            return None
        if self.session.queue is None:
            return None
        return self.next_image()

    def use_preview(self) -> bool:
        return self.segment_panel.use_preview()

    def export_labels(self, path: str | Path):
        return self.queue_panel.export_labels(path)

    def is_idle(self, slot: str | None = None) -> bool:
        """No background task running (in ``slot``, or at all)."""
        return not self.session.tasks.busy(slot)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        _shutdown(self.session, self.viewer, list(SHORTCUTS))
        super().closeEvent(event)
