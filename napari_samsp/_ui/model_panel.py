"""Model panel: choose the weights (embedded default, a built-in config, the project's active
version, or a file), the device, load in a worker, and show the model card."""

from __future__ import annotations

import html
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import SamspError
from ..models.card import as_model_card
from ..project import version_weights
from .loading import load_into_session

DEFAULT = "default"
FILE = "file"
ACTIVE_VERSION = "active version"

TRUST_TOOLTIP = (
    "Checkpoints saved by the SAM-UNet training code pickle Python objects (optimizer state, "
    "argparse settings) next to the weights. Unpickling such a file can run arbitrary code, so "
    "it is refused unless you tick this box. Only tick it for files from a source you trust. "
    "Official SAM .pth files and our .safetensors never need it."
)


def card_html(loaded, lineage: list[str] | None = None) -> str:
    """A short, readable summary of a model card; ``lineage``: :meth:`Project.lineage <napari_samsp.project.Project.lineage>` of it."""
    card = as_model_card(loaded.card)
    cfg = card.config
    source = str(loaded.source)
    rows = [
        ("source", Path(source).name if ("/" in source or "\\" in source) else source),
        ("architecture", str(cfg.get("name", "?")) + (" + SAM-UNet branch" if cfg.get("unet") else "")),
        ("input", f"{card.input_size or '?'} px, patch {cfg.get('patch_size', '?')}"),
        ("mode", f"{card.mode}, {card.num_passes} self-prompting passes"),
        ("prompts", {1: "decoded on the image alone", 2: "image and its left-right mirror, averaged"}.get(
            card.prompt_flip_views, f"image and its {card.prompt_flip_views - 1} mirror images, averaged")),
        ("preprocessing", card.preprocessing),
        ("version", str(card.version or loaded.model_id)[:24]),
    ]
    if lineage:
        rows.append(("comes from", " ← ".join(lineage)))
    elif card.parent:
        rows.append(("parent", str(card.parent)[:24]))
    if card.created:
        rows.append(("created", str(card.created)))
    data = card.training_data
    if data:
        # One data set per line: a long comma-joined line would widen the whole dock.
        rows.append(("trained on", "\n".join(f"{d.get('name')} ({d.get('count')})" for d in data[:4])))
    if card.steps:
        rows.append(("steps", str(card.steps)))
    metrics = card.metrics
    if metrics:
        shown = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:4]
        if shown:
            rows.append(("metrics", "\n".join(f"{k} {v:g}" if float(v).is_integer() else f"{k} {v:.3f}" for k, v in shown)))
    body = "".join(
        f"<tr><td style='color:#999;padding-right:6px'>{html.escape(k)}</td>"
        f"<td>{html.escape(str(v)).replace(chr(10), '<br>')}</td></tr>"
        for k, v in rows
    )
    warn = ""
    if loaded.is_random:
        warn = (
            "<p style='color:#ff6b6b'><b>Random weights:</b> this model is untrained; its masks are "
            "meaningless until you fine-tune it or load trained weights.</p>"
        )
    return f"{warn}<table>{body}</table>"


class ModelPanel(QWidget):
    """Loads a model into the session (in a thread worker)."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.source = QComboBox()
        # Sized to a short minimum, not its longest entry, so the dock stays narrow.
        self.source.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.source.setMinimumContentsLength(12)
        self.source.setToolTip("Which weights to load")
        self._fill_sources()
        self.source.currentIndexChanged.connect(self._on_source)
        form.addRow("Weights", self.source)

        file_row = QHBoxLayout()
        self.path = QLineEdit()
        self.path.setPlaceholderText(".safetensors, official SAM .pth or SAM-UNet checkpoint")
        self.path.setToolTip("Path of a weights file (used when Weights is 'file…')")
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose a weights file")
        browse.clicked.connect(self._browse)
        file_row.addWidget(self.path)
        file_row.addWidget(browse)
        self.file_row = QWidget()
        self.file_row.setLayout(file_row)
        file_row.setContentsMargins(0, 0, 0, 0)
        form.addRow("File", self.file_row)

        self.trust = QCheckBox("trust this file (allow pickled objects)")
        self.trust.setToolTip(TRUST_TOOLTIP)
        form.addRow("", self.trust)

        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setToolTip("auto picks CUDA, then Apple MPS, then the CPU")
        form.addRow("Device", self.device)
        layout.addLayout(form)

        self.load_button = QPushButton("Load model")
        self.load_button.setToolTip("Load the chosen weights in the background")
        self.load_button.clicked.connect(lambda: self.load())
        layout.addWidget(self.load_button)

        self.card = QLabel("No model loaded.")
        self.card.setWordWrap(True)
        # A long card line must wrap, not widen the dock (the scroll area has no horizontal bar).
        self.card.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.card.setTextFormat(Qt.RichText)
        self.card.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.card)
        self._on_source()
        session.model_changed.connect(self._show_card)

    # -- choices ---------------------------------------------------------------------
    def _fill_sources(self) -> None:
        from ..models.build import describe_models

        self.source.addItem("embedded default", DEFAULT)
        for name, desc in describe_models():
            self.source.addItem(f"{name} (config)", name)
            self.source.setItemData(self.source.count() - 1, desc, Qt.ToolTipRole)
        self.source.addItem("project's active version", ACTIVE_VERSION)
        self.source.addItem("file…", FILE)

    def _on_source(self) -> None:
        is_file = self.source.currentData() == FILE
        self.file_row.setEnabled(is_file)
        self.trust.setEnabled(is_file)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model weights", str(Path.home()), "Weights (*.safetensors *.pth *.pt *.bin);;All files (*)"
        )
        if path:
            self.path.setText(path)
            self.source.setCurrentIndex(self.source.findData(FILE))

    def select(self, source: str) -> None:
        """Select a source by key (``default``, a config name, ``active version``, ``file``) or a file path."""
        idx = self.source.findData(source)
        if idx < 0:
            self.path.setText(str(source))
            idx = self.source.findData(FILE)
        self.source.setCurrentIndex(idx)

    # -- loading ---------------------------------------------------------------------
    def _resolve(self):
        """(name_or_path for load_model, human-readable description)."""
        from ..errors import WeightsError

        key = self.source.currentData()
        if key == DEFAULT:
            return None, "embedded default"
        if key == FILE:
            text = self.path.text().strip()
            if not text:
                raise WeightsError("choose a weights file first")
            return text, Path(text).name
        if key == ACTIVE_VERSION:
            project = self.session.project
            active = project.active_version()
            if active is None:
                raise WeightsError(f"no active fine-tuned version in {project.models_dir} yet")
            return str(version_weights(active.path)), f"version {active.version}"
        return key, key

    def load(self, source: str | None = None, device: str | None = None, trust: bool | None = None):
        """Load weights in a worker (``source``: see :meth:`select`); returns the task or None."""
        if source is not None:
            self.select(source)
        if device is not None:
            self.device.setCurrentText(device)
        if trust is not None:
            self.trust.setChecked(bool(trust))
        try:
            target, label = self._resolve()
        except (SamspError, OSError) as exc:  # our one-line errors and file-system failures
            self.session.messages.exception(exc, "loading the model")
            return None
        key = self.source.currentData()
        return load_into_session(
            self.session, target, self.device.currentText(), self.trust.isChecked(), label,
            remember_base=key != ACTIVE_VERSION,
        )

    def _show_card(self, loaded) -> None:
        if loaded is None:
            self.card.setText("No model loaded.")
        else:
            self.card.setText(card_html(loaded, self.session.project.lineage(loaded.card or {})))
        self.card.setToolTip("" if loaded is None else f"weights: {loaded.source}\nmodel id: {loaded.model_id}")
