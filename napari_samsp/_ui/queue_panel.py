"""Queue + export panel: a folder of images as a work queue ("next image", optionally ranked by
the calibrated self-reward), and exporting the labels as TIFF / PNG / COCO JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import SamspError


class QueuePanel(QWidget):
    """Work queue and export."""

    def __init__(self, session, segment_panel, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.segment_panel = segment_panel
        self.queue_layer = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        grid = QGridLayout()
        self.open_button = QPushButton("Open folder…")
        self.open_button.setToolTip("Use a folder of images (or a data-layout folder with images/) as the work queue")
        self.open_button.clicked.connect(lambda: self.open_folder())
        self.next_button = QPushButton("Next image")
        self.next_button.setToolTip("Open the next image of the queue that was not sent yet [Shift+N]")
        self.next_button.clicked.connect(lambda: self.next_image())
        grid.addWidget(self.open_button, 0, 0)
        grid.addWidget(self.next_button, 0, 1)

        self.rank = QCheckBox("rank by expected Dice")
        self.rank.setToolTip(
            "Order the queue by the model's calibrated self-reward: images it is worst at come first "
            "(needs a loaded model; takes one pass over the folder)"
        )
        self.auto = QCheckBox("auto-segment on open")
        self.auto.setChecked(True)
        self.auto.setToolTip("Run auto-segmentation on each image the queue opens")
        grid.addWidget(self.rank, 1, 0)
        grid.addWidget(self.auto, 1, 1)
        layout.addLayout(grid)
        self.info = QLabel("No queue: open a folder, or work on any Image layer.")
        self.info.setWordWrap(True)
        layout.addWidget(self.info)
        self.items = QListWidget()
        self.items.setMaximumHeight(120)
        self.items.setToolTip(
            "The queue in the order it opens images. Ranked: lowest expected Dice first (the model's calibrated "
            "estimate of how good its own mask is), so the images it is worst at come first. ▶ current, ✓ sent"
        )
        layout.addWidget(self.items)
        self.export_button = QPushButton("Export labels…")
        self.export_button.setToolTip("Save the labels of the current image as TIFF, 16-bit PNG or COCO JSON")
        self.export_button.clicked.connect(lambda: self.export_labels())
        layout.addWidget(self.export_button)
        session.store_changed.connect(self._update_info)

    def _update_info(self) -> None:
        q = self.session.queue
        if q is None:
            return
        pos = q.index + 1
        current = q.current.name if q.current is not None else "-"
        order = "lowest expected Dice first" if q.scores else "file order"
        self.info.setText(f"Queue ({order}): {pos}/{len(q)} ({current}); {len(q.sent)} sent, {q.remaining} to go")
        self.items.clear()
        for i, path in enumerate(q.items):
            mark = "▶ " if i == q.index else ("✓ " if path in q.sent else "   ")
            row = q.scores.get(path)
            dice = f"  expected Dice {row['expected_dice']:.2f}" if row and row.get("expected_dice") is not None else ""
            item = QListWidgetItem(f"{mark}{path.name}{dice}")
            item.setData(Qt.UserRole, str(path))
            self.items.addItem(item)

    # -- queue -------------------------------------------------------------------------------
    def open_folder(self, folder: str | Path | None = None, rank: bool | None = None):
        """Make ``folder`` the work queue and open its first image. Returns True, a task (ranking) or None."""
        s = self.session
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder of images to annotate", str(Path.home()))
            if not folder:
                return None
        use_rank = self.rank.isChecked() if rank is None else bool(rank)
        from ..work_queue import WorkQueue

        if use_rank and s.predictor is None:
            s.messages.info("ranking needs a loaded model; the queue is in file order")
            use_rank = False
        if not use_rank:
            try:
                s.queue = WorkQueue.from_folder(folder)
            except SamspError as exc:
                s.messages.exception(exc, "opening the folder")
                return None
            self._update_info()
            s.messages.status(f"queue: {len(s.queue)} images from {folder}")
            self.next_image()
            return True
        predictor, project = s.predictor, s.project
        card = s.loaded.model_card if s.loaded is not None else None
        mode = self.segment_panel.mode.currentText()
        mode = mode if mode in ("semantic", "instance") else None  # everything: rank the card's self-prompted masks

        def work(ctx):
            # `samsp rank --project` ranks alike: the same order.
            return project.ranked_queue(folder, predictor, card, mode, progress=ctx.report)

        def done(queue):
            s.queue = queue
            self._update_info()
            s.messages.status(f"queue: {len(queue)} images from {folder}, lowest expected Dice first")
            self.next_image()

        return s.tasks.start("model", f"ranking the images of {Path(folder).name}", work, on_done=done)

    def _retire(self, layer) -> None:
        """Remove the previous queue image and its layers, unless its labels hold unsent edits (then hide them)."""
        viewer = self.session.viewer
        if layer is None or layer not in viewer.layers:
            return
        ws = self.session.workspace if (self.session.workspace is not None and self.session.workspace.image is layer) else None
        companions = ws.companions() if ws is not None else []
        if ws is not None:
            self.segment_panel.remove_preview(ws)
        if ws is not None and ws.dirty:
            for lay in [layer, *companions]:
                lay.visible = False
            self.session.messages.info(f"'{layer.name}' has unsent edits: its layers are kept (hidden)")
            return
        for lay in [*companions, layer]:
            if lay in viewer.layers:
                viewer.layers.remove(lay)

    def _reuse(self, layer, image, rgb: bool, path: Path):
        """Put the next image into the previous queue layers (removing and adding napari layers is
        slow); None when that is not possible (unsent edits, another dimensionality or colour mode)."""
        s = self.session
        ws = s.workspace
        if layer is None or layer not in s.viewer.layers or ws is None or ws.image is not layer or ws.dirty:
            return None
        from ..interactive import spatial_shape
        from .workspace import Workspace

        try:
            spatial = spatial_shape(image.shape, rgb)
        except SamspError:
            return None
        if bool(layer.rgb) != rgb or len(spatial) != len(ws.spatial):
            return None
        companions = (ws._labels, ws._points, ws._shapes)
        if not all(c is not None and c in s.viewer.layers for c in companions):
            return None
        labels, points, shapes = companions
        self.segment_panel.remove_preview(ws)
        s.set_workspace(None)
        with points.events.data.blocker(), shapes.events.data.blocker():
            points.data = np.zeros((0, len(spatial)))
            shapes.data = []
        # A fresh Labels layer in the old one's place: napari keeps a layer's Ctrl+Z history across
        # data swaps, and the only way to drop it with public API is a new layer.
        index = s.viewer.layers.index(labels)
        s.viewer.layers.remove(labels)
        labels = s.viewer.add_labels(
            np.zeros(spatial, np.uint32), name=labels.name, opacity=labels.opacity,
            scale=labels.scale, translate=labels.translate,
        )
        s.viewer.layers.move(s.viewer.layers.index(labels), index)
        companions = (labels, points, shapes)
        layer.data = image
        layer.metadata = {"samsp_path": str(path)}
        layer.reset_contrast_limits()
        layer.name = path.stem
        labels.name, points.name, shapes.name = (f"{path.stem} {k}" for k in ("labels", "prompts", "boxes"))
        labels.selected_label = 1
        s.viewer.reset_view()
        new_ws = Workspace(s.viewer, layer, adopt=companions)
        s.set_workspace(new_ws)
        return layer

    def next_image(self):
        """Open the next queue image (and auto-segment it); returns the new Image layer or None."""
        s = self.session
        q = s.queue
        if q is None:
            s.messages.info("no queue: open a folder of images first")
            return None
        if s.tasks.busy("model"):
            s.messages.info(f"busy: {s.tasks.describe('model')}")
            return None
        from ..io import read_image

        while True:
            path = q.next()
            if path is None:
                s.messages.info(f"queue finished: {len(q.sent)} of {len(q)} images sent")
                self._update_info()
                return None
            try:
                image = read_image(path)
                break
            except SamspError as exc:
                s.messages.exception(exc, "skipping an unreadable image")
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        layer = self._reuse(self.queue_layer, image, rgb, path)
        if layer is None:
            self._retire(self.queue_layer)
            layer = s.viewer.add_image(image, name=path.stem, rgb=rgb, metadata={"samsp_path": str(path)})
            if self.segment_panel.use_layer(layer) is None:
                return layer
        self.queue_layer = layer
        self._update_info()
        from .existing import open_existing_mask

        if open_existing_mask(s, q.existing_mask(path)):
            return layer  # the user corrects that mask: no auto-segmentation over it
        if self.auto.isChecked() and s.predictor is not None:
            self.segment_panel.segment_current()
        return layer

    # -- export ------------------------------------------------------------------------------
    def export_labels(self, path: str | Path | None = None):
        """Export the labels of the current image; the format follows the suffix (.tif, .png, .json)."""
        s = self.session
        ws = s.workspace
        if ws is None or not ws.has_labels():
            s.messages.error("no labels to export: segment or annotate an image first")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export labels", str(Path.home() / f"{ws.name}_labels.tif"),
                "TIFF (*.tif *.tiff);;16-bit PNG (*.png);;COCO JSON (*.json)",
            )
            if not path:
                return None
        from ..export import export_labels, stack_names

        try:
            ws.check_labels()
            written = export_labels(
                path, ws.labels.data, image_name=ws.name,
                **({"semantic": self.segment_panel.mode.currentText() == "semantic"} if str(path).lower().endswith(".json") else {}),
            )
        except (SamspError, OSError) as exc:
            s.messages.exception(exc, "export")
            return None
        s.messages.info(f"exported labels to {stack_names(written)}")
        return written
