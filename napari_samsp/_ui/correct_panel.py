"""Correction panel: prompts (points +/- and boxes) re-decode the selected object from the cached
embedding on every change; commit / clear / undo / propagate through a stack; send to the store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..errors import InputImageError, SamspError
from ..interactive import new_label_id, paint_mask, propagate_object
from ..local_prompts import Window, WindowedEditor, choose_window, prompt_extent
from .edits import was_corrected
from .loading import ensure_embedding, require_model


class CorrectPanel(QWidget):
    """Interactive correction of the current image."""

    def __init__(self, session, segment_panel, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.segment_panel = segment_panel
        self._pending = False
        self.last_decode_s: float | None = None  # decoder time of the last update
        self.last_update_s: float | None = None  # decode + paint into the Labels layer
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.hint = QLabel(
            "Click in the <i>prompts</i> layer to add points (<b>T</b> toggles +/-), draw boxes in the "
            "<i>boxes</i> layer; the selected label is re-decoded on every change."
        )
        self.hint.setWordWrap(True)
        layout.addWidget(self.hint)
        grid = QGridLayout()
        self.sign_button = QPushButton("Next point: positive (T)")
        self.sign_button.setCheckable(True)
        self.sign_button.setChecked(True)
        self.sign_button.setToolTip("Sign of the next prompt point: positive adds to the object, negative removes [T]")
        self.sign_button.clicked.connect(lambda checked: self.set_sign(checked))
        self.object_label = QLabel("Object id: -")
        self.object_label.setToolTip("The label id prompts paint into (the Labels layer's selected label)")
        self.commit_button = QPushButton("Commit object")
        self.commit_button.setToolTip("Keep this object, clear the prompts and start a new object id [Shift+C]")
        self.commit_button.clicked.connect(lambda: self.commit_object())
        self.clear_button = QPushButton("Clear prompts")
        self.clear_button.setToolTip("Remove all prompt points and boxes; the labels stay as they are [Shift+X]")
        self.clear_button.clicked.connect(lambda: self.clear_prompts())
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip(
            "Undo the last model edit (auto-segmentation, object, propagation) [Shift+U]; "
            "brush strokes have napari's own undo (Ctrl+Z)"
        )
        self.undo_button.clicked.connect(lambda: self.undo())
        self.propagate_button = QPushButton("Propagate in 3D")
        self.propagate_button.setToolTip(
            "Carry the selected object to the neighbouring slices of a stack, each prompted with the "
            "previous slice's box; stops where the object ends [Shift+R]"
        )
        self.propagate_button.clicked.connect(lambda: self.propagate())
        grid.addWidget(self.sign_button, 0, 0)
        grid.addWidget(self.object_label, 0, 1)
        grid.addWidget(self.commit_button, 1, 0)
        grid.addWidget(self.clear_button, 1, 1)
        grid.addWidget(self.undo_button, 2, 0)
        grid.addWidget(self.propagate_button, 2, 1)
        layout.addLayout(grid)

        self.send_button = QPushButton("Send corrections to the store")
        self.send_button.setToolTip(
            "Save the image (slice) and its labels in the project's annotation store, the training set of the "
            "next fine-tuning [Shift+D]"
        )
        self.send_button.clicked.connect(lambda: self.send_corrections())
        self.all_slices = QCheckBox("all annotated slices")
        self.all_slices.setToolTip("For a stack: send every slice that has labels, not only the current one")
        row = QGridLayout()
        row.addWidget(self.send_button, 0, 0)
        row.addWidget(self.all_slices, 0, 1)
        layout.addLayout(row)
        self.counter = QLabel()
        self.counter.setWordWrap(True)
        layout.addWidget(self.counter)

        session.workspace_changed.connect(self._attach)
        session.store_changed.connect(self._update_counter)
        session.project_changed.connect(lambda p: self._update_counter())
        self._attach(session.workspace)
        self._update_counter()

    # -- wiring --------------------------------------------------------------------------
    def _attach(self, ws) -> None:
        self.propagate_button.setEnabled(ws is not None and ws.is_stack)
        if ws is None:
            self.object_label.setText("Object id: -")
            return
        ws.on_prompts = self.on_prompts
        ws.set_prompt_sign(self.sign_button.isChecked())

    def watch_labels(self, ws) -> None:
        layer = ws.labels
        layer.events.selected_label.disconnect(self._on_selected_label)  # a no-op when not connected
        layer.events.selected_label.connect(self._on_selected_label)
        self._on_selected_label()

    def _on_selected_label(self, event=None) -> None:
        ws = self.session.workspace
        if ws is not None and ws.has_labels():
            self.object_label.setText(f"Object id: {int(ws.labels.selected_label)}")

    def _update_counter(self) -> None:
        n = self.session.store_count()
        self.counter.setText(f"Store: <b>{n}</b> corrected image{'s' if n != 1 else ''}")
        self.counter.setToolTip(f"Annotation store: {self.session.project.store_dir}")

    def ensure_layers(self):
        """Create the labels/prompt layers for the current image (so the user can start clicking)."""
        ws = self.segment_panel.workspace()
        if ws is None:
            return None
        try:
            ws.check_labels()
        except SamspError as exc:
            self.session.messages.exception(exc)
            return None
        _ = ws.labels, ws.shapes, ws.points
        self.watch_labels(ws)
        self.session.viewer.layers.selection.active = ws.points
        return ws

    # -- prompts -------------------------------------------------------------------------
    def set_sign(self, positive: bool) -> None:
        self.sign_button.setChecked(bool(positive))
        self.sign_button.setText(f"Next point: {'positive' if positive else 'negative'} (T)")
        if self.session.workspace is not None:
            self.session.workspace.set_prompt_sign(positive)
        self.session.messages.status(f"next prompt point: {'positive' if positive else 'negative'}")

    def toggle_sign(self) -> None:
        self.set_sign(not self.sign_button.isChecked())

    def on_prompts(self, action: str) -> None:
        self.decode(restart=action in ("changed", "removed"))

    def _run_pending(self) -> None:
        if self._pending:
            self._pending = False
            self.decode(restart=True)

    def decode(self, restart: bool = False) -> bool:
        """Re-decode the selected object from the prompts of the current plane and paint it.

        Returns True when the Labels layer was updated now (False: nothing to do, an
        error was shown, or it will happen when the embedding / a running task is ready).
        """
        s = self.session
        ws = s.workspace
        if ws is None:
            return False
        if not require_model(s):
            return False
        try:
            ws.check_labels()
        except SamspError as exc:
            s.messages.exception(exc)
            return False
        if s.tasks.busy("model"):
            if not self._pending:
                self._pending = True
                s.tasks.when_idle("model", self._run_pending)
            s.messages.status(f"busy ({s.tasks.describe('model')}): the mask updates when it is done")
            return False
        z = ws.current_z()
        prompts = ws.prompts(z)
        window = self._window(ws, z, prompts)
        whole = window == Window(0, ws.spatial[-2], 0, ws.spatial[-1])
        emb = ensure_embedding(s, ws, z, then=lambda: self.decode(restart=True), window=None if whole else window)
        if emb is None:
            return False
        t0 = time.perf_counter()
        layer = ws.labels
        label_id = int(layer.selected_label) or new_label_id(layer.data)
        plane = ws.labels_plane(z)
        editor = s.editor
        key = (ws.key, z, label_id)
        try:
            if (
                editor is None
                or s.editor_key != key
                or editor.window != window
                or not np.array_equal(plane, editor.painted)
            ):
                if prompts.empty:
                    return False
                # A fresh id and a first click on an existing object: correct that object.
                first = prompts.first_positive
                if first is not None and not (plane == label_id).any():
                    r, c = first
                    if 0 <= r < plane.shape[0] and 0 <= c < plane.shape[1] and plane[r, c]:
                        label_id = int(plane[r, c])
                        layer.selected_label = label_id
                        key = (ws.key, z, label_id)
                s.history.push(ws.key, z, plane)
                editor = WindowedEditor(
                    s.predictor, plane, label_id, window, multimask_first_click=s.official_weights, embedding=emb
                )
                s.editor, s.editor_key = editor, key
                restart = False
            t1 = time.perf_counter()
            new_plane = editor.update(prompts, restart=restart)
            t2 = time.perf_counter()
            ws.set_labels_plane(z, new_plane)
        except SamspError as exc:
            s.messages.exception(exc, "decoding the object")
            return False
        self.last_decode_s = t2 - t1
        self.last_update_s = time.perf_counter() - t0
        if editor.mask is not None and not editor.mask.any():
            s.messages.status(
                f"object {label_id}: the model returned an empty mask for these prompts "
                f"(add a positive point or a box; Shift+U restores the labels)"
            )
        elif editor.mask is not None:
            s.messages.status(
                f"object {label_id}: {int(editor.mask.sum())} px, predicted IoU {editor.score:.2f}, "
                f"decoded in {1000 * self.last_decode_s:.0f} ms"
            )
        return True

    def _window(self, ws, z, prompts) -> Window:
        """Where to decode: the whole plane, or on a large one the auto-segmentation tile around the
        prompts (kept while the object's prompts fit in it), so objects keep their native scale."""
        from ..autoseg import default_tiling

        _, tile, overlap = default_tiling(self.session.predictor.model.img_size)
        editor = self.session.editor
        key = self.session.editor_key
        current = editor.window if editor is not None and key is not None and key[:2] == (ws.key, z) else None
        return choose_window(tuple(ws.spatial[-2:]), prompt_extent(prompts), tile, overlap, current)

    def commit_object(self) -> None:
        """Keep the object as painted, clear the prompts and select a new label id."""
        ws = self.session.workspace
        if ws is None:
            self.session.messages.info("nothing to commit: no image is being annotated")
            return
        try:
            ws.check_labels()
        except SamspError as exc:
            self.session.messages.exception(exc)
            return
        self.session.reset_editor()
        ws.clear_prompts()
        layer = ws.labels
        if self.segment_panel.mode.currentText() != "semantic" or int(layer.selected_label) == 0:
            layer.selected_label = new_label_id(layer.data)
        self.session.messages.status(f"object committed; next object id {int(layer.selected_label)}")

    def clear_prompts(self) -> None:
        ws = self.session.workspace
        if ws is None:
            return
        self.session.reset_editor()
        ws.clear_prompts()
        self.session.messages.status("prompts cleared")

    def undo(self) -> bool:
        """Restore the labels before the last model edit of this image."""
        s = self.session
        ws = s.workspace
        if ws is None:
            s.messages.info("nothing to undo")
            return False
        item = s.history.pop()
        while item is not None and item[0] != ws.key:
            item = s.history.pop()
        if item is None:
            s.messages.info("nothing to undo")
            return False
        _, z, array = item
        try:
            ws.check_labels()
            ws.clear_prompts()
            s.reset_editor()
            if z is None:
                ws.set_labels(array, user_edit=True)
            else:
                ws.set_labels_plane(z, array)
        except SamspError as exc:
            s.messages.exception(exc, "undo")
            return False
        s.messages.status("undone")
        return True

    # -- 3D --------------------------------------------------------------------------------
    def propagate(self):
        """Propagate the selected object of the current slice through the stack (in a worker)."""
        s = self.session
        ws = s.workspace
        if ws is None or not require_model(s):
            return None
        if not ws.is_stack:
            s.messages.info("propagation needs a 3D stack; this image is 2D")
            return None
        try:
            ws.check_labels()
        except SamspError as exc:
            s.messages.exception(exc)
            return None
        z0 = ws.current_z()
        label_id = int(ws.labels.selected_label)
        labels = np.array(ws.labels.data, copy=True)
        if not (labels[z0] == label_id).any():
            s.messages.error(f"object {label_id} is not on slice {z0}: segment it there first (or select its label)")
            return None
        predictor = s.predictor
        from ..autoseg import default_tiling

        _, tile, overlap = default_tiling(predictor.model.img_size)

        def work(ctx):
            return propagate_object(
                predictor, ws.model_plane, ws.num_planes, labels, z0, label_id,
                progress=ctx.report, cancel=ctx.cancelled, tile=tile, overlap=overlap,
            )

        def done(masks):
            if not masks:
                s.messages.info(f"object {label_id} did not carry over to the neighbouring slices")
                return
            try:
                ws.check_labels()
                s.history.push(ws.key, None, np.asarray(ws.labels.data))
                data = ws.labels.data
                for z, mask in masks.items():
                    data[z] = paint_mask(data[z], mask, label_id)
                ws.labels.refresh()
                ws.dirty = True
            except SamspError as exc:
                s.messages.exception(exc, "propagation")
                return
            s.reset_editor()
            s.messages.status(f"object {label_id} propagated to slices {min(masks)}-{max(masks)} (undo: Shift+U)")

        return s.tasks.start("model", f"propagating object {label_id} from slice {z0}", work, on_done=done, total=ws.num_planes - 1)

    # -- store -----------------------------------------------------------------------------
    def send_corrections(self, all_slices: bool | None = None):
        """Store the current image (slice) and its labels in the annotation store; returns the entries or None."""
        s = self.session
        ws = self.segment_panel.workspace()
        if ws is None:
            return None
        every = self.all_slices.isChecked() if all_slices is None else bool(all_slices)
        try:
            ws.check_labels()
            if not ws.has_labels():
                raise InputImageError(
                    f"the labels layer of '{ws.name}' was deleted: nothing to send (auto-segment, prompt or "
                    "paint to make a new one)"
                )
            zs = list(range(ws.num_planes)) if (ws.is_stack and every) else [ws.current_z()]
            planes = [(z, ws.labels_plane(z)) for z in zs]
            planes = [(z, p) for z, p in planes if p.any()]
            if not planes:
                raise InputImageError("the mask is empty: nothing to send (auto-segment or prompt an object first)")
            store = s.store
            entries = [
                store.add(
                    ws.raw_plane(z), plane, source=ws.source, slice_index=z, model_version=s.model_id,
                    corrected=was_corrected(edits), name=ws.name, edits=edits,
                    **({"mask_source": ws.mask_source} if getattr(ws, "mask_source", None) else {}),
                )
                for z, plane in planes
                for edits in [s.edits.summary(ws, z, plane) if s.edits is not None else {"pixels_edited": 1}]
            ]
        except (SamspError, OSError) as exc:
            s.messages.exception(exc, "sending corrections")
            return None
        ws.dirty = False
        path = (ws.image.metadata or {}).get("samsp_path")
        if s.queue is not None and path:
            s.queue.mark_sent(Path(path))
        s.store_changed.emit()
        what = f"{len(entries)} slices" if len(entries) > 1 else (f"slice {planes[0][0]}" if ws.is_stack else "image")
        how = "corrected" if any(e.corrected for e in entries) else "accepted as proposed"
        n = s.store_count()
        s.messages.info(f"sent {what} of '{ws.name}' to the store, {how} ({n} corrected image{'s' if n != 1 else ''} in the store)")
        return entries
