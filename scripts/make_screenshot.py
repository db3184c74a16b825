"""Screenshot of the annotator in a real napari window, for the docs.

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/make_screenshot.py [--model NAME_OR_PATH]

Opens the synthetic nuclei sample, loads the model (default: the embedded default), auto-segments
in instance mode, clicks once on a nucleus it missed and saves the whole window
to docs/screenshots/plugin.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default, a config name or a weights file")
    parser.add_argument("--mode", default="instance", choices=["semantic", "instance"])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "plugin.png"))
    parser.add_argument("--project", default=None, help="project folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from napari_samsp._widget import SamspWidget  # noqa: F401  (torchvision before OpenGL)

    import napari
    from qtpy.QtCore import Qt

    from napari_samsp._ui.demo import run_demo, wait_idle

    viewer = napari.Viewer(show=True, title="napari-samsp: SAM-SP annotator")
    window = viewer.window._qt_window
    window.resize(1400, 900)
    project = args.project or tempfile.mkdtemp(prefix="samsp-shot-")
    widget = run_demo(viewer, project, model=None if args.model == "default" else args.model, mode=args.mode)
    from qtpy.QtWidgets import QApplication, QDockWidget

    for dock in window.findChildren(QDockWidget):
        if widget in dock.findChildren(type(widget)):
            window.resizeDocks([dock], [430], Qt.Horizontal)
    viewer.reset_view()
    # Close the pop-up notifications: they would cover the canvas.
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in window.findChildren(NapariQtNotification):
        toast.close()

    for _ in range(20):
        QApplication.processEvents()
    wait_idle(widget)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
