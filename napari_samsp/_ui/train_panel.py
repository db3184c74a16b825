"""Fine-tune panel: train on the project's annotation store in a worker (cancel, progress, live
loss / validation-Dice curves), activate the result, re-segment; model versions with rollback."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import SamspError
from ..project import version_weights
from .loading import load_into_session
from .plot import TrainingPlot


class _Relay(QObject):
    """Carries training callbacks from the worker thread to the GUI thread (queued Qt signals)."""

    loss = Signal(int, object)
    val = Signal(int, object)


def _dice(metrics: dict | None) -> float | None:
    if not metrics:
        return None
    value = metrics.get("dice")
    return float(value) if isinstance(value, (int, float)) else None


IMPROVE_TIP = (
    "CSR-style: the model scores candidate masks on unlabeled images with its calibrated self-reward, "
    "trains on the best (pseudo-labels + preference against a frozen copy), always mixed with your "
    "corrected masks; a round that lowers validation Dice is undone."
)


def _load_version(project, info, device):
    """Load a saved version and its predictor (in a worker thread)."""
    new = project.load_version(info, device=device)
    return new, project.predictor(new)


def _spin_box(low: int, high: int, value: int, tooltip: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    box.setToolTip(tooltip)
    return box


class TrainPanel(QWidget):
    """Fine-tuning and model versions."""

    def __init__(self, session, resegment: Callable[[], object] | None = None, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.resegment = resegment
        self.last_outcome = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Steps"))
        self.steps = _spin_box(1, 100_000, 300, "Optimizer steps (batch of 4); ~300 adapt the small models in minutes on a CPU")
        row.addWidget(self.steps)
        self.start_button = QPushButton("Fine-tune")
        self.start_button.setToolTip("Fine-tune the current model on the project's annotation store (in the background)")
        self.start_button.clicked.connect(lambda: self.start_finetune())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop fine-tuning; the active model stays as it is")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.cancel())
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        irow = QHBoxLayout()
        irow.addWidget(QLabel("Rounds"))
        self.rounds = _spin_box(1, 20, 2, "At most this many self-improvement rounds (stops at the first that does not help)")
        irow.addWidget(self.rounds)
        irow.addWidget(QLabel("steps"))
        self.improve_steps = _spin_box(1, 100_000, 50, "Optimizer steps per self-improvement round")
        irow.addWidget(self.improve_steps)
        irow.addStretch(1)
        layout.addLayout(irow)
        # On its own line: beside the spin boxes it made the dock wider than the viewer allows.
        self.improve_button = QPushButton("Self-improve on the queue")
        self.improve_button.setToolTip(IMPROVE_TIP)
        self.improve_button.clicked.connect(lambda: self.start_self_improve())
        layout.addWidget(self.improve_button)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        layout.addWidget(self.bar)
        self.plot = TrainingPlot(self)
        layout.addWidget(self.plot)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        layout.addWidget(self.result)

        layout.addWidget(QLabel("Model versions of this project"))
        self.versions_list = QListWidget()
        self.versions_list.setMaximumHeight(90)
        self.versions_list.setToolTip("Fine-tuned versions, oldest first; ● marks the active one")
        layout.addWidget(self.versions_list)
        vrow = QHBoxLayout()
        self.use_button = QPushButton("Use selected")
        self.use_button.setToolTip("Activate and load the selected version")
        self.use_button.clicked.connect(lambda: self.activate_selected())
        self.rollback_button = QPushButton("Roll back")
        self.rollback_button.setToolTip("Go back to the version that was active before the current one")
        self.rollback_button.clicked.connect(lambda: self.rollback())
        vrow.addWidget(self.use_button)
        vrow.addWidget(self.rollback_button)
        layout.addLayout(vrow)

        self._relay = _Relay()
        self._relay.loss.connect(lambda step, d: self.plot.add_loss(step, d.get("total", float("nan"))))
        self._relay.val.connect(self._on_val)
        session.project_changed.connect(lambda p: self.refresh_versions())
        session.model_changed.connect(lambda m: self.refresh_versions())
        self.refresh_versions()

    # -- fine-tuning -------------------------------------------------------------------------
    def _on_val(self, step: int, metrics: dict) -> None:
        dice = _dice(metrics)
        if dice is not None:
            self.plot.add_val(step, dice)
            self.session.messages.status(f"fine-tuning: step {step}, validation Dice {dice:.3f}")

    def _on_progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, max(1, total))
        self.bar.setValue(done)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.improve_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.use_button.setEnabled(not running)
        self.rollback_button.setEnabled(not running)

    def _on_failure(self, action: str):
        """Error handler for a training task: the active model is never touched, so say so."""

        def failed(exc):
            from ..finetune.loop import TrainingCancelled

            self._set_running(False)
            if isinstance(exc, TrainingCancelled):
                self.session.messages.info(f"{action} cancelled: the active model is unchanged")
                self.result.setText("cancelled; the active model is unchanged")
            else:
                self.session.messages.exception(exc, f"{action} failed (the active model is unchanged)")
                self.result.setText("failed; the active model is unchanged")
            self.refresh_versions()

        return failed

    def _ready_to_train(self, action: str, store_hint: str):
        """The project when a model is loaded and its store has corrections; else None (user told why)."""
        s = self.session
        if s.loaded is None:
            s.messages.error(f"no model loaded: load the model to {action} first")
            return None
        if s.project.store_count() == 0:
            s.messages.error(
                f"{store_hint}the annotation store {s.project.store_dir} is empty: correct a few images and send them first"
            )
            return None
        return s.project

    def start_finetune(self, steps: int | None = None):
        """Start fine-tuning in a worker; returns the task or None (after telling the user why)."""
        s = self.session
        if steps is not None:
            self.steps.setValue(int(steps))
        project = self._ready_to_train("fine-tune", "")
        if project is None:
            return None
        loaded = s.loaded
        device = s.device
        n_steps = int(self.steps.value())
        relay = self._relay

        def work(ctx):
            from ..finetune.job import default_finetune_config
            from ..finetune.loop import Callbacks

            base = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
            callbacks = Callbacks(
                progress=ctx.report,
                on_loss=lambda step, d: relay.loss.emit(int(step), dict(d)),
                on_val=lambda step, d: relay.val.emit(int(step), dict(d)),
                should_cancel=ctx.cancelled,
            )
            outcome = project.finetune(base, default_finetune_config(n_steps), callbacks, version_if_kept=False)
            if outcome.version is None:  # no step beat the current model: nothing new to load
                return outcome, None, None
            new, predictor = _load_version(project, outcome.version, device)
            return outcome, new, predictor

        def done(result):
            outcome, new, predictor = result
            self._set_running(False)
            self.last_outcome = outcome
            before, after = _dice(outcome.before), _dice(outcome.after)
            if outcome.version is None:
                text = "no step beat the current model on validation: no new version, the model is unchanged"
            else:
                text = f"new version {outcome.version.path.stem} is active"
            if before is not None and after is not None:
                text = f"validation Dice {before:.3f} → {after:.3f}; " + text
            self.result.setText(text)
            if new is None:
                self.refresh_versions()
                s.messages.info(f"fine-tuning done: {text}")
            else:
                self._install(new, predictor, f"fine-tuning done: {text}")

        failed = self._on_failure("fine-tuning")

        self.plot.clear()
        self.result.setText("")
        self.bar.setRange(0, n_steps)
        self.bar.setValue(0)
        task = s.tasks.start("train", f"fine-tuning {n_steps} steps on {project.store_count()} images", work,
                             on_done=done, on_error=failed, total=n_steps)
        if task is not None:
            task.progress_listeners.append(self._on_progress)
            self._set_running(True)
        return task

    def _install(self, new, predictor, message: str) -> None:
        """Make a freshly trained version the session's model (once the model slot is free), re-segment."""
        s = self.session

        def install():
            s.set_model(new, predictor)
            s.messages.info(message)
            if self.resegment is not None and s.workspace is not None:
                self.resegment()

        s.tasks.when_idle("model", install)

    def cancel(self) -> None:
        self.session.tasks.cancel("train")

    # -- self-improvement ------------------------------------------------------------------
    def _unlabeled(self) -> list:
        """The queue's images not in the store yet, else the current image (plane) of the workspace."""
        s = self.session
        if s.queue is not None:
            return s.project.not_in_store([p for p in s.queue.items if p not in s.queue.sent])
        ws = s.workspace
        if ws is None or ws.image not in s.viewer.layers:
            return []
        return [ws.raw_plane(ws.current_z())]

    def start_self_improve(self, rounds: int | None = None, steps: int | None = None):
        """CSR-style self-improvement on the queue in a worker; returns the task or None (after telling why)."""
        s = self.session
        if rounds is not None:
            self.rounds.setValue(int(rounds))
        if steps is not None:
            self.improve_steps.setValue(int(steps))
        project = self._ready_to_train("improve", "self-improvement needs corrected masks: ")
        if project is None:
            return None
        try:
            unlabeled = self._unlabeled()
        except SamspError as exc:
            s.messages.exception(exc, "reading the annotation store")
            return None
        if not unlabeled:
            s.messages.error("no unlabeled images to improve on: open a queue folder or an image first")
            return None
        loaded = s.loaded
        device = s.device
        n_rounds = int(self.rounds.value())
        n_steps = int(self.improve_steps.value())

        def work(ctx):
            from ..reward.improve import ImproveConfig

            outcome = project.self_improve(
                loaded, unlabeled, rounds=n_rounds, config=ImproveConfig(steps=n_steps),
                progress=lambda stage, done, total: ctx.report(done, total), should_cancel=ctx.cancelled,
            )
            if outcome.version is None:
                return outcome.report, None, None
            new, predictor = _load_version(project, outcome.version, device)
            return outcome.report, new, predictor

        def done(result):
            report, new, predictor = result
            self._set_running(False)
            self.result.setText(report.message)
            if new is not None:
                self._install(new, predictor, report.message)
            else:
                s.messages.info(report.message)
            self.refresh_versions()

        failed = self._on_failure("self-improvement")

        self.result.setText("")
        self.bar.setRange(0, 0)
        task = s.tasks.start("train", f"self-improvement ({n_rounds} round(s), {len(unlabeled)} unlabeled images)",
                             work, on_done=done, on_error=failed)
        if task is not None:
            task.progress_listeners.append(self._on_progress)
            self._set_running(True)
        return task

    # -- versions ----------------------------------------------------------------------------
    def refresh_versions(self) -> None:
        self.versions_list.clear()
        project = self.session.project
        versions = project.versions if project.has_versions() else None
        if versions is None:
            item = QListWidgetItem("(no fine-tuned versions yet)")
            item.setFlags(Qt.NoItemFlags)
            self.versions_list.addItem(item)
            return
        try:
            infos = versions.list()
            active = versions.active()
        except (SamspError, OSError) as exc:  # our one-line errors and file-system failures
            self.session.messages.exception(exc, "reading model versions")
            return
        if not infos:
            item = QListWidgetItem("(no fine-tuned versions yet)")
            item.setFlags(Qt.NoItemFlags)
            self.versions_list.addItem(item)
        for info in infos:
            mark = "● " if active is not None and info.version == active.version else "   "
            item = QListWidgetItem(mark + info.label)
            item.setData(Qt.UserRole, info.version)
            self.versions_list.addItem(item)

    def _switch_version(self, change, what: str):
        """Run ``change(versions) -> VersionInfo | None`` unless the model is busy, then load the result."""
        s = self.session
        versions = s.project.versions
        if s.tasks.busy("model"):
            s.messages.info(f"busy: {s.tasks.describe('model')}")
            return None
        try:
            info = change(versions)
        except (SamspError, OSError) as exc:  # our one-line errors and file-system failures
            s.messages.exception(exc, what)
            return None
        return self._load_info(info)

    def activate(self, version: str | None):
        """Activate ``version`` (None: the base model) and load it."""
        return self._switch_version(lambda versions: versions.activate(version), "activating the version")

    def activate_selected(self):
        item = self.versions_list.currentItem()
        version = None if item is None else item.data(Qt.UserRole)
        if not version:
            self.session.messages.info("select a version in the list first")
            return None
        return self.activate(version)

    def rollback(self):
        """Re-activate the previously active version (or the base model) and load it."""
        s = self.session
        try:
            on_base = not s.project.can_roll_back()
        except (SamspError, OSError):  # an unreadable active.json: let rollback report it
            on_base = False
        if on_base:
            s.messages.info("nothing to roll back: you are using the base model, which has not been fine-tuned yet")
            return None
        return self._switch_version(lambda versions: versions.rollback(), "rollback")

    def _load_info(self, info):
        s = self.session
        if info is None:
            target, trust = s.base_target if s.base_target is not None else (None, False)
            label = "the base model"
        else:
            target, trust, label = str(version_weights(info.path)), False, f"version {info.path.stem}"
        self.refresh_versions()
        return load_into_session(s, target, s.device, trust, label, remember_base=False, on_loaded=lambda m: self._after_switch())

    def _after_switch(self) -> None:
        self.refresh_versions()
        if self.resegment is not None and self.session.workspace is not None:
            self.resegment()
