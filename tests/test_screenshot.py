"""A real napari window (under Xvfb): sample data, auto-segment, a prompt, then a screenshot of the
whole window. Written to ``$SAMSP_SCREENSHOT_DIR/plugin.png`` when that is set, else to tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_samsp._ui.demo import run_demo, wait_idle  # noqa: E402
from napari_samsp._widget import SamspWidget  # noqa: E402, F401  (loads torchvision before OpenGL)

pytestmark = pytest.mark.gui


def test_screenshot_of_a_real_window(qtbot, tmp_path):
    import napari
    from PIL import Image

    out_dir = Path(os.environ.get("SAMSP_SCREENSHOT_DIR") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "plugin.png"
    viewer = napari.Viewer(show=True)
    try:
        viewer.window._qt_window.resize(1400, 900)
        widget = run_demo(viewer, tmp_path / "project", model="micro", timeout=60)
        assert widget.session.workspace is not None
        labels = viewer.layers["synthetic nuclei labels"]
        assert labels.data.shape == (256, 256)
        assert len(widget.session.workspace.points.data) == 1
        qtbot.wait(300)
        wait_idle(widget)
        viewer.screenshot(str(path), canvas_only=False)
    finally:
        viewer.close()
    assert path.is_file() and path.stat().st_size > 20_000
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600
    assert pixels.reshape(-1, 3).std(axis=0).max() > 10  # not a uniform image
    assert len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 50
