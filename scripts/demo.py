"""The napari demo: the annotator on the embedded default model and generated sample data.

    python scripts/demo.py                         # opens a napari window
    python scripts/demo.py --screenshot out.png    # headless (under xvfb-run): auto-segment, save, quit
    python scripts/demo.py --write-samples DIR     # only write the generated sample images as PNG/TIF
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def write_samples(folder: Path) -> list[Path]:
    from napari_samsp.io import write_png_atomic, write_tiff_atomic
    from napari_samsp.sample_data_gen import synthetic_nuclei, synthetic_ultrasound

    folder.mkdir(parents=True, exist_ok=True)
    nuclei, _ = synthetic_nuclei(seed=1)
    ultrasound, _ = synthetic_ultrasound(seed=2)
    return [write_tiff_atomic(folder / "sample_nuclei.tif", nuclei), write_png_atomic(folder / "sample_ultrasound.png", ultrasound)]


def run_viewer(screenshot: Path | None, timeout_s: float) -> int:
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-samsp demo")
    viewer.window.resize(1400, 900)
    viewer.open_sample("napari-samsp", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samsp", "SAM-SP annotator")
    widget.load_model("default")
    state = {"segmented": False, "waited": 0.0}

    def tick() -> None:
        state["waited"] += 0.5
        if not widget.is_idle():
            if state["waited"] > timeout_s:
                print("demo: timed out waiting for the model", file=sys.stderr)
                viewer.close()
            return
        if not state["segmented"]:
            state["segmented"] = True
            widget.segment()
            return
        if screenshot is not None:
            timer.stop()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            viewer.reset_view()
            viewer.screenshot(str(screenshot), canvas_only=False)
            print(f"screenshot saved: {screenshot}")
            viewer.close()
        else:
            timer.stop()

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(500)
    napari.run()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--write-samples", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    if args.write_samples:
        for p in write_samples(args.write_samples):
            print(p)
        return 0
    return run_viewer(args.screenshot, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
