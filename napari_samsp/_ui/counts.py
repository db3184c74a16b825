"""A always-visible count line in the dock: objects on the current image, corrected images in the
store, and where the work queue stands. Recounted (debounced) when the labels change."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel


def count_objects(labels: np.ndarray, mode: str) -> int:
    """Label ids in use (instance), or connected foreground regions (semantic); (H, W) or (Z, H, W)."""
    arr = np.asarray(labels)
    if mode != "semantic":  # instance and everything: one label per object
        flat = arr.ravel()
        top = int(flat.max(initial=0))
        if top == 0:
            return 0
        if np.issubdtype(flat.dtype, np.integer) and flat.min(initial=0) >= 0 and top < 5_000_000:
            return int(np.count_nonzero(np.bincount(flat.astype(np.intp, copy=False))[1:]))
        return int(len(np.unique(flat[flat > 0])))
    from scipy import ndimage

    return int(ndimage.label(arr > 0)[1])


class CountsLabel(QLabel):
    """'Objects: 12 · Corrected images: 3 · Queue: 2/5 sent'."""

    def __init__(self, session, mode_box, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.mode_box = mode_box
        self.setWordWrap(True)
        self.setToolTip("Objects on the current image (connected regions in semantic mode), corrected images "
                        "in the project's store, and the work queue")
        self.objects: int | None = None
        self._labels = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.recount)
        session.workspace_changed.connect(lambda ws: self.schedule())
        session.store_changed.connect(self.schedule)
        session.viewer.layers.events.inserted.connect(lambda e: self.schedule())
        session.viewer.layers.events.removed.connect(lambda e: self.schedule())
        mode_box.currentTextChanged.connect(lambda t: self.schedule())
        self.recount()

    def schedule(self, event=None) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _watch(self, layer) -> None:
        if layer is self._labels:
            return
        for old in [self._labels] if self._labels is not None else []:
            for name in ("data", "paint", "labels_update", "set_data"):
                emitter = getattr(old.events, name, None)
                if emitter is not None:
                    emitter.disconnect(self.schedule)  # a no-op when not connected
        self._labels = layer
        if layer is not None:
            for name in ("data", "paint", "labels_update", "set_data"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.connect(self.schedule)

    def recount(self) -> None:
        s = self.session
        ws = s.workspace
        parts = []
        if ws is not None and ws.has_labels() and ws.image in s.viewer.layers:
            layer = ws.labels
            self._watch(layer)
            mode = self.mode_box.currentText()
            self.objects = count_objects(layer.data, mode)
            what = "objects" if mode == "instance" else "regions"
            parts.append(f"{what.capitalize()}: <b>{self.objects}</b>")
        else:
            self._watch(None)
            self.objects = None
            parts.append("Objects: -")
        parts.append(f"Corrected images: <b>{s.store_count()}</b>")
        q = s.queue
        if q is not None:
            parts.append(f"Queue: {len(q.sent)}/{len(q)} sent")
        self.setText(" · ".join(parts))
