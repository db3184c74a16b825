"""Screenshots for docs/FIRST_FIVE_MINUTES.md, taken from the real napari window.

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/first_five_minutes.py docs/screenshots

Every step is driven as a user drives it: mouse clicks on the dock's buttons, key presses and a
brush stroke on the canvas (Qt test events), on generated sample images (no third-party data),
with the embedded default model. Each screenshot is downscaled to 1000 px wide (PNG, 256 colours).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def write_images(folder: Path) -> None:
    from napari_samsp.io import write_png_atomic
    from napari_samsp.sample_data_gen import synthetic_nuclei

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(4):
        image, _ = synthetic_nuclei((192, 192), n=6 + 2 * k, seed=40 + k)
        write_png_atomic(folder / f"cells_{k}.png", (image // 256).astype(np.uint8))


def main(out_dir: Path) -> int:
    import napari
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication, QFileDialog
    from superqt import QCollapsible

    from napari_samsp._ui.demo import wait_idle
    from napari_samsp._widget import SamspWidget

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="samsp_ffm_"))
    write_images(work / "images")
    viewer = napari.Viewer(title="napari-samsp: first five minutes")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1400, 900)
    widget = SamspWidget(viewer, project=work / "project")
    viewer.window.add_dock_widget(widget, name="SAM-SP annotator", area="right")
    sections = widget.findChildren(QCollapsible)

    def pump(ms: int = 300) -> None:
        QTest.qWait(ms)
        app.processEvents()

    def show_sections(*titles: str) -> None:
        for box in sections:
            if any(t in box.text() for t in titles):
                box.expand(animate=False)
            else:
                box.collapse(animate=False)
        pump(200)

    def click(button) -> None:
        QTest.mouseClick(button, Qt.LeftButton)
        pump(100)

    def key(k) -> None:
        native = viewer.window._qt_viewer.canvas.native
        native.setFocus()
        QTest.keyClick(native, k, Qt.ShiftModifier)
        pump(100)

    def canvas_point(row: float, col: float) -> QPoint:
        native = viewer.window._qt_viewer.canvas.native
        cy, cx = viewer.camera.center[-2:]
        z = viewer.camera.zoom
        return QPoint(int(native.width() / 2 + (col - cx) * z), int(native.height() / 2 + (row - cy) * z))

    def shot(name: str) -> Path:
        from PIL import Image

        pump(400)
        try:  # napari's own start-up warnings (e.g. the PyQt5 deprecation) as toasts: not ours
            from napari._qt.dialogs.qt_notification import NapariQtNotification

            for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
                toast.close()
            pump(100)
        except Exception:
            pass
        path = out_dir / name
        viewer.screenshot(str(path), canvas_only=False)
        img = Image.open(path).convert("RGB")
        img = img.resize((1000, round(img.height * 1000 / img.width)), Image.LANCZOS)
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
        return path

    # 1. Load the embedded default model.
    show_sections("Model")
    click(widget.model_panel.load_button)
    wait_idle(widget, 300)
    shot("ffm_1_model.png")

    # 2. Open a folder as the work queue, ranked by expected Dice (lowest first), in semantic or instance mode.
    show_sections("Queue")
    QFileDialog.getExistingDirectory = staticmethod(lambda *a, **k: str(work / "images"))  # the dialog's answer
    click(widget.queue_panel.rank)
    click(widget.queue_panel.open_button)
    wait_idle(widget, 300)
    wait_idle(widget, 300)
    shot("ffm_2_queue.png")

    # 3. Correct: a positive click on an object, a brush stroke for a missed one.
    show_sections("Correct")
    ws = widget.session.workspace
    native = viewer.window._qt_viewer.canvas.native
    labels = ws.labels
    ids, counts = np.unique(labels.data[labels.data > 0], return_counts=True)
    rows, cols = np.nonzero(labels.data == ids[np.argmax(counts)]) if len(ids) else (np.array([96]), np.array([96]))
    viewer.layers.selection.active = ws.points
    ws.points.mode = "add"
    p = canvas_point(float(rows.mean()), float(cols.mean()))
    QTest.mousePress(native, Qt.LeftButton, Qt.NoModifier, p)
    QTest.mouseRelease(native, Qt.LeftButton, Qt.NoModifier, p)
    wait_idle(widget, 120)
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    labels.brush_size = 6
    labels.selected_label = int(labels.data.max()) + 1
    a, b = canvas_point(20, 20), canvas_point(20, 50)
    QTest.mousePress(native, Qt.LeftButton, Qt.NoModifier, a)
    for k in range(1, 9):
        QTest.mouseMove(native, QPoint(a.x() + (b.x() - a.x()) * k // 8, a.y()))
    QTest.mouseRelease(native, Qt.LeftButton, Qt.NoModifier, b)
    pump(300)
    shot("ffm_3_correct.png")

    # 4. Send (Shift+D); the counts line says what is in the store.
    key(Qt.Key_D)
    shot("ffm_4_sent.png")

    # 5. Next image (Shift+N), accept it as proposed (Shift+Enter), then fine-tune.
    key(Qt.Key_N)
    wait_idle(widget, 300)
    key(Qt.Key_Return)
    wait_idle(widget, 300)
    show_sections("Fine-tune")
    widget.train_panel.steps.setValue(20)
    click(widget.train_panel.start_button)
    wait_idle(widget, 900, "train")
    wait_idle(widget, 300)
    shot("ffm_5_finetune.png")

    # 6. A model change never overwrites corrected labels: the new model's result goes to a preview layer.
    versions = widget.session.versions
    if not versions.list():
        # Fine-tuning kept the base (no step beat it on validation), so there is no version to switch
        # to: save the current weights as one, standing for a version made earlier.
        loaded = widget.session.loaded
        base = loaded.model_card
        versions.add(loaded.model, base.child(steps=base.steps, training_data=base.training_data).to_dict())
        widget.train_panel.refresh_versions()
    if versions.list():
        show_sections("Fine-tune", "Model")
        labels = widget.session.workspace.labels
        viewer.layers.selection.active = labels
        labels.mode = "paint"
        labels.selected_label = int(labels.data.max()) + 1
        a, b = canvas_point(170, 20), canvas_point(170, 60)
        QTest.mousePress(native, Qt.LeftButton, Qt.NoModifier, a)
        for k in range(1, 9):
            QTest.mouseMove(native, QPoint(a.x() + (b.x() - a.x()) * k // 8, a.y()))
        QTest.mouseRelease(native, Qt.LeftButton, Qt.NoModifier, b)
        pump(200)
        widget.train_panel.versions_list.setCurrentRow(len(versions.list()) - 1)
        click(widget.train_panel.use_button)
        wait_idle(widget, 300)
        wait_idle(widget, 300)
        shot("ffm_6_model_change.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/screenshots")))
