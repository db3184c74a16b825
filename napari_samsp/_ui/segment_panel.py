"""Image + auto-segment panel: pick the Image layer to work on, segment the current image /
slice or the whole stack by self-prompting, and precompute embeddings."""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QGridLayout, QPushButton, QVBoxLayout, QWidget

from ..errors import SamspError
from .embeddings import plane_key
from .loading import require_model
from .workspace import Workspace, check_image_layer


def describe_labels(labels: np.ndarray, mode: str) -> str:
    """'12 objects' (instance) or '3 foreground regions' (semantic: connected components)."""
    if mode != "semantic":  # instance and everything: one label per object
        n = len(np.unique(labels[labels > 0]))
        return f"{n} object{'s' if n != 1 else ''}"
    from scipy import ndimage

    n = int(ndimage.label(np.asarray(labels) > 0)[1])
    return f"{n} foreground region{'s' if n != 1 else ''}"


class SegmentPanel(QWidget):
    """Chooses the working image and runs prompt-free segmentation."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.viewer = session.viewer
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The Image layer to annotate (2D, 3D stack, RGB, 8/16-bit or float)")
        self.image_combo.activated.connect(self._on_combo)
        form.addRow("Image", self.image_combo)
        self.mode = QComboBox()
        self.mode.addItems(["semantic", "instance", "everything"])
        self.mode.setToolTip(
            "semantic: one foreground label; instance: one label per object (both self-prompted);\n"
            "everything: one label per object from a grid of point prompts (for SAM weights not trained to "
            "self-prompt).\nFollows the model card until you choose; your choice then stays when the model changes"
        )
        self.user_mode: str | None = None  # set when the user picks a mode; a model change keeps it
        self.mode.activated.connect(lambda index: setattr(self, "user_mode", self.mode.itemText(index)))
        form.addRow("Mode", self.mode)
        layout.addLayout(form)

        grid = QGridLayout()
        self.segment_button = QPushButton("Segment image/slice")
        self.segment_button.setToolTip("Prompt-free self-prompted segmentation of the current image or slice [Shift+S]")
        self.segment_button.clicked.connect(lambda: self.segment_current())
        self.segment_all_button = QPushButton("Segment all slices")
        self.segment_all_button.setToolTip("Segment every slice of a 3D stack (in the background)")
        self.segment_all_button.clicked.connect(lambda: self.segment_all())
        self.embed_button = QPushButton("Precompute embeddings")
        self.embed_button.setToolTip("Encode every slice now (cached on disk) so clicks on any slice are instant")
        self.embed_button.clicked.connect(lambda: self.embed_all())
        grid.addWidget(self.segment_button, 0, 0)
        grid.addWidget(self.segment_all_button, 0, 1)
        grid.addWidget(self.embed_button, 1, 0)
        self.use_preview_button = QPushButton("Use preview")
        self.use_preview_button.setToolTip(
            "After a model change, an image you corrected is re-segmented into a '<image> preview' layer; "
            "this replaces your labels with it (undo: Shift+U)"
        )
        self.use_preview_button.setEnabled(False)
        self.use_preview_button.clicked.connect(lambda: self.use_preview())
        grid.addWidget(self.use_preview_button, 1, 1)
        self.previews: dict[int, object] = {}  # workspace key -> preview Labels layer
        layout.addLayout(grid)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.events.moved.connect(self._refresh_layers)
        session.model_changed.connect(self._on_model)
        session.workspace_changed.connect(self._on_workspace)
        self._refresh_layers()

    # -- image choice ------------------------------------------------------------------
    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        current = self.session.workspace.image if self.session.workspace is not None else None
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self._image_layers():
            self.image_combo.addItem(layer.name, id(layer))
            if layer is current:
                self.image_combo.setCurrentIndex(self.image_combo.count() - 1)
        self.image_combo.blockSignals(False)
        for layer in self._image_layers():  # keep names in sync
            layer.events.name.disconnect(self._refresh_layers)
            layer.events.name.connect(self._refresh_layers)

    def _on_workspace(self, ws) -> None:
        self.segment_all_button.setEnabled(ws is None or ws.is_stack)
        self._refresh_layers()

    def _on_removed(self, event) -> None:
        ws = self.session.workspace
        if ws is not None and event.value is ws.image:
            self.session.set_workspace(None)
        elif ws is not None and event.value in ws.companions():
            self.session.reset_editor()
        self._refresh_layers()

    def _on_combo(self, index: int) -> None:
        key = self.image_combo.itemData(index)
        for layer in self._image_layers():
            if id(layer) == key:
                self.use_layer(layer)
                return

    def _on_model(self, loaded) -> None:
        if loaded is not None:
            self.mode.setCurrentText(self.user_mode or self.session.default_mode)

    def use_layer(self, layer) -> Workspace | None:
        """Work on ``layer`` (must be an Image layer the model can take); None after telling the user why not."""
        ws = self.session.workspace
        if ws is not None and ws.image is layer:
            return ws
        try:
            check_image_layer(layer)
            ws = Workspace(self.viewer, layer)
        except SamspError as exc:
            self.session.messages.exception(exc)
            return None
        self.session.set_workspace(ws)
        self.session.messages.status(f"working on '{layer.name}' ({'x'.join(map(str, ws.spatial))})")
        return ws

    def workspace(self) -> Workspace | None:
        """The workspace of the chosen image (falls back to the selected layer)."""
        ws = self.session.workspace
        if ws is not None and ws.image in self.viewer.layers:
            return ws
        index = self.image_combo.currentIndex()
        if index >= 0:
            key = self.image_combo.itemData(index)
            for layer in self._image_layers():
                if id(layer) == key:
                    return self.use_layer(layer)
        active = self.viewer.layers.selection.active
        return self.use_layer(active)

    # -- segmentation ------------------------------------------------------------------
    def _kwargs(self, mode: str | None = None) -> dict:
        from ..models.card import SegmentOptions

        loaded = self.session.loaded
        return SegmentOptions.from_card(None if loaded is None else loaded.model_card, mode or self.mode.currentText()).kwargs()

    def segment_current(self, preview: bool = False):
        """Auto-segment the current image (or slice of a stack) in a worker; returns the task or None.

        ``preview``: write the result into a separate '<image> preview' Labels layer and leave the
        labels untouched (what a model change does to an image the user corrected).
        """
        ws = self.workspace()
        if ws is None or not require_model(self.session):
            return None
        try:
            ws.check_labels()
        except SamspError as exc:
            self.session.messages.exception(exc)
            return None
        z = ws.current_z()
        mode = self.mode.currentText()
        predictor = self.session.predictor
        kwargs = self._kwargs()

        def work(ctx):
            from ..autoseg import default_tiling, mask_transparent, segment_image

            t0 = time.perf_counter()
            plane = ws.model_plane(z)
            if max(plane.shape[:2]) > default_tiling(predictor.model.img_size)[0]:  # tiled, each tile embedded
                res = segment_image(predictor, plane, mode=mode, progress=ctx.report, cancel=ctx.cancelled, **kwargs)
                return res, None, time.perf_counter() - t0
            emb = predictor.embed(plane)  # kept for the clicks that follow
            res = segment_image(predictor, emb, mode=mode, progress=ctx.report, cancel=ctx.cancelled, **kwargs)
            return mask_transparent(res, plane), emb, time.perf_counter() - t0

        def done(result):
            res, emb, seconds = result
            if preview:
                self._show_preview(ws, z, res.labels)
            else:
                self._apply_plane(ws, z, res.labels, mode)
            if emb is not None:
                self.session.embeddings.put(predictor, plane_key(ws.key, z), emb)
            where = "" if z is None else f" slice {z}"
            if preview:
                self.session.messages.status(
                    f"the new model found {describe_labels(res.labels, mode)} in '{ws.name}'{where}: shown in the "
                    f"layer '{ws.name} preview'; your corrected labels are unchanged ('Use preview' takes it)"
                )
                return
            self.session.messages.status(
                f"auto-segmented '{ws.name}'{where}: {describe_labels(res.labels, mode)} "
                f"in {seconds:.1f} s (undo: Shift+U)"
            )

        where = "" if z is None else f" slice {z}"
        return self.session.tasks.start("model", f"auto-segmenting '{ws.name}'{where}", work, on_done=done, total=1)

    # -- model changes: never overwrite what the user corrected ---------------------------
    def is_corrected(self, ws: Workspace) -> bool:
        """The labels of the current plane hold the user's work: unsent edits, prompts or strokes made,
        or pixels that differ from the model's last proposal (e.g. labels the user brought)."""
        if ws.dirty or getattr(ws, "mask_source", None):  # edited, or labels brought from a file
            return True
        if not ws.has_labels() or self.session.edits is None:
            return ws.has_labels() and bool(np.asarray(ws.labels.data).any())
        z = ws.current_z()
        from .edits import was_corrected

        return was_corrected(self.session.edits.summary(ws, z, ws.labels_plane(z)))

    def after_model_change(self):
        """Re-segment the current image with the newly loaded model: in place when its labels are
        the model's own proposal (or empty), into a preview layer when the user corrected them."""
        ws = self.session.workspace
        if ws is None or ws.image not in self.viewer.layers or self.session.predictor is None:
            return None
        try:
            corrected = self.is_corrected(ws)
        except SamspError:
            return None
        return self.segment_current(preview=corrected)

    def preview_layer(self, ws: Workspace | None = None):
        ws = ws or self.session.workspace
        layer = None if ws is None else self.previews.get(ws.key)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _show_preview(self, ws: Workspace, z, labels: np.ndarray) -> None:
        layer = self.preview_layer(ws)
        if layer is None:
            layer = self.viewer.add_labels(
                np.zeros(ws.spatial, np.uint32), name=f"{ws.name} preview", opacity=0.4,
                scale=ws.image.scale, translate=ws.image.translate, metadata={"samsp_preview_of": ws.key},
            )
            self.previews[ws.key] = layer
            if ws.has_labels():  # the user's labels stay on top of (and selected over) the preview
                layers = self.viewer.layers
                layers.move(layers.index(layer), layers.index(ws.labels))
                layers.selection.active = ws.labels
        data = np.zeros(ws.spatial, np.uint32) if not ws.is_stack else np.asarray(layer.data)
        if ws.is_stack:
            data[z] = labels
        else:
            data = labels.astype(np.uint32)
        layer.data = data
        layer.visible = True
        self.use_preview_button.setEnabled(True)

    def use_preview(self) -> bool:
        """Take the preview into the labels (undo: Shift+U) and remove the preview layer."""
        ws = self.session.workspace
        layer = self.preview_layer(ws)
        if ws is None or layer is None:
            self.session.messages.info("no preview: it appears when a new model re-segments an image you corrected")
            return False
        try:
            ws.check_labels()
            old = np.array(ws.labels.data, copy=True)
            if tuple(layer.data.shape) != ws.spatial:
                raise SamspError("the preview no longer matches the image")
        except SamspError as exc:
            self.session.messages.exception(exc)
            return False
        self.session.history.push(ws.key, None, old)
        with ws.suspended():
            ws.clear_prompts()
        self.session.reset_editor()
        ws.set_labels(np.asarray(layer.data, np.uint32), user_edit=False)
        if self.session.edits is not None:
            if ws.is_stack:
                self.session.edits.set_stack_proposal(ws, np.asarray(layer.data))
            else:
                self.session.edits.set_proposal(ws, None, np.asarray(layer.data))
        self.remove_preview(ws)
        self.session.messages.status(f"the new model's labels replace those of '{ws.name}' (undo: Shift+U)")
        return True

    def remove_preview(self, ws: Workspace | None) -> None:
        layer = self.preview_layer(ws)
        if ws is not None:
            self.previews.pop(ws.key, None)
        if layer is not None:
            self.viewer.layers.remove(layer)
        self.use_preview_button.setEnabled(self.preview_layer() is not None)

    def _apply_plane(self, ws: Workspace, z, labels: np.ndarray, mode: str) -> None:
        try:
            old = ws.labels_plane(z)
        except SamspError as exc:
            self.session.messages.exception(exc)
            return
        self.session.history.push(ws.key, z, old)
        plane = labels.astype(np.uint32)
        with ws.suspended():
            ws.clear_prompts()
        self.session.reset_editor()
        ws.set_labels_plane(z, plane, user_edit=False)
        if self.session.edits is not None:
            self.session.edits.set_proposal(ws, z, plane)
        ws.labels.selected_label = 1 if mode == "semantic" else int(plane.max(initial=0)) + 1

    def segment_all(self):
        """Auto-segment every slice of a stack (a 2D image: the image); instance ids unique over the stack."""
        ws = self.workspace()
        if ws is None or not require_model(self.session):
            return None
        if not ws.is_stack:
            return self.segment_current()
        try:
            ws.check_labels()
        except SamspError as exc:
            self.session.messages.exception(exc)
            return None
        mode = self.mode.currentText()
        predictor = self.session.predictor
        kwargs = self._kwargs()
        n = ws.num_planes

        def work(ctx):
            from ..autoseg import SegmentationCancelled, segment_image

            t0 = time.perf_counter()
            out = np.zeros(ws.spatial, np.uint32)
            offset = 0
            for z in range(n):
                if ctx.cancelled():
                    raise SegmentationCancelled(f"auto-segmentation cancelled after {z} of {n} slices; labels unchanged")
                lab = segment_image(predictor, ws.model_plane(z), mode=mode, **kwargs).labels.astype(np.uint32)
                if mode != "semantic" and lab.any():
                    lab[lab > 0] += offset
                    offset = int(lab.max())
                out[z] = lab
                ctx.report(z + 1, n)
            return out, time.perf_counter() - t0

        def done(result):
            out, seconds = result
            try:
                old = ws.labels.data
                ws.check_labels()
            except SamspError as exc:
                self.session.messages.exception(exc)
                return
            self.session.history.push(ws.key, None, np.asarray(old))
            with ws.suspended():
                ws.clear_prompts()
            self.session.reset_editor()
            ws.set_labels(out)
            if self.session.edits is not None:
                self.session.edits.set_stack_proposal(ws, out)
            ws.labels.selected_label = 1 if mode == "semantic" else int(out.max(initial=0)) + 1
            self.session.messages.status(f"auto-segmented {n} slices of '{ws.name}' in {seconds:.1f} s (undo: Shift+U)")

        return self.session.tasks.start("model", f"auto-segmenting {n} slices of '{ws.name}'", work, on_done=done, total=n)

    def embed_all(self):
        """Compute (and cache) the embedding of every slice."""
        ws = self.workspace()
        if ws is None or not require_model(self.session):
            return None
        predictor = self.session.predictor
        n = ws.num_planes
        zs = list(range(n)) if ws.is_stack else [None]
        from ..autoseg import default_tiling
        from ..tiling import plan_tiles

        threshold, tile, overlap = default_tiling(predictor.model.img_size)
        large = max(ws.spatial[-2:]) > threshold  # clicks there are decoded in these tiles

        keep = self.session.embeddings.max_entries

        def work(ctx):
            hits = 0
            made: list = []  # the last (plane key, embedding) pairs, for the session's embeddings
            for i, z in enumerate(zs):
                if ctx.cancelled():
                    break
                plane = ws.model_plane(z)
                for y0, y1, x0, x1 in plan_tiles(plane.shape[:2], tile, overlap) if large else [(0, None, 0, None)]:
                    emb = predictor.embed(plane[y0:y1, x0:x1])
                    hits += int(emb.from_cache)
                    # a tile of a large plane is the window clicks there are decoded in (correct panel)
                    made = [*made, (plane_key(ws.key, z, (y0, y1, x0, x1) if large else None), emb)][-keep:]
                ctx.report(i + 1, len(zs))
            return made, hits

        def done(result):
            made, hits = result
            for key, emb in made:
                self.session.embeddings.put(predictor, key, emb)
            self.session.messages.status(f"embeddings ready for {len(zs)} plane(s) ({hits} from the cache)")

        return self.session.tasks.start("model", f"embedding {len(zs)} plane(s) of '{ws.name}'", work, on_done=done, total=len(zs))

