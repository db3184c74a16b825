"""A scripted demo session, shared by the screenshot test, ``scripts/make_screenshot.py`` and
``scripts/bench_latency.py``: sample data, model, auto-segmentation, one prompt."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def wait_idle(widget, timeout: float = 120.0, slot: str | None = None) -> None:
    """Process Qt events until the widget has no task running (in ``slot``)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.monotonic()
    while not widget.is_idle(slot):
        app.processEvents()
        time.sleep(0.005)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"still busy after {timeout} s: {widget.session.tasks.describe(slot or 'model')}")
    app.processEvents()


def object_centre(labels: np.ndarray, rank: int = 0) -> tuple[int, int]:
    """(row, col) inside the ``rank``-th largest object of a label image."""
    from scipy import ndimage

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    oid = ids[np.argsort(-counts)[min(rank, len(ids) - 1)]]
    dist = ndimage.distance_transform_edt(labels == oid)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def run_demo(viewer, project: str | Path, model: str | None = "default", mode: str = "instance", timeout: float = 300.0):
    """Dock the annotator, open the synthetic nuclei sample, load ``model``, auto-segment and add
    a positive click on one nucleus. Returns the widget."""
    from .._widget import SamspWidget

    widget = SamspWidget(viewer, project=project)
    viewer.window.add_dock_widget(widget, name="SAM-SP annotator", area="right")
    viewer.open_sample("napari-samsp", "nuclei")
    image = viewer.layers["synthetic nuclei"]
    truth = np.asarray(viewer.layers["synthetic nuclei ground truth"].data)
    widget.load_model(model)
    wait_idle(widget, timeout)
    widget.use_layer(image)
    widget.segment_panel.mode.setCurrentText(mode)
    widget.segment()
    wait_idle(widget, timeout)
    # Correct one object: a positive click inside the largest nucleus (the dim one auto-segmentation
    # misses with the embedded model). No negative click: one placed on background next to a good
    # mask shrinks it (docs/PLUGIN.md, known limitations), and a user only clicks where a mask is wrong.
    r, c = object_centre(truth, 0)
    widget.add_point(r, c, positive=True)
    wait_idle(widget, timeout)
    viewer.layers.selection.active = widget.session.workspace.points
    return widget
