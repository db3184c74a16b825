"""The annotation loop driven as a user drives it (issue 11): real mouse clicks and key presses
through qtbot on napari's canvas and on the dock's buttons, with the embedded default model, under
Xvfb. Each test names the break of issue 11 it covers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

# Imported before any viewer exists: loads torchvision (and triton) before OpenGL (see _ui/compat.py).
from napari_samsp._widget import SamspWidget  # noqa: E402
from napari_samsp.sample_data_gen import synthetic_nuclei, synthetic_nuclei_stack  # noqa: E402

from qtpy.QtCore import QPoint, Qt  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 60_000


# -- helpers: what a user does ------------------------------------------------------------
def wait(qtbot, widget, slot=None, timeout=TIMEOUT):
    qtbot.waitUntil(lambda: widget.is_idle(slot), timeout=timeout)


def canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def screen_point(viewer, row: float, col: float) -> QPoint:
    """Where the data pixel (row, col) of a 2D view is on the canvas (scale 1, no translate)."""
    native = canvas(viewer)
    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom
    return QPoint(int(round(native.width() / 2 + (col - cx) * zoom)), int(round(native.height() / 2 + (row - cy) * zoom)))


def press(qtbot, viewer, key, modifier=Qt.ShiftModifier):
    """A key press on the canvas (napari dispatches it to the viewer's key bindings)."""
    native = canvas(viewer)
    native.setFocus()
    qtbot.keyClick(native, key, modifier)


def click(qtbot, button):
    """A left click on a dock widget, scrolled into view first, as a user would."""
    from qtpy.QtWidgets import QScrollArea

    parent = button.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        parent.ensureWidgetVisible(button)
    assert button.isVisible() and button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.LeftButton)


def left_click_canvas(qtbot, viewer, row, col):
    native = canvas(viewer)
    p = screen_point(viewer, row, col)
    qtbot.mousePress(native, Qt.LeftButton, pos=p)
    qtbot.mouseRelease(native, Qt.LeftButton, pos=p)


def brush_stroke(qtbot, viewer, labels, row, col0, col1, label=None, size=5):
    """Paint a horizontal stroke with the mouse in the labels layer."""
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    labels.brush_size = size
    if label is not None:
        labels.selected_label = label
    native = canvas(viewer)
    p0, p1 = screen_point(viewer, row, col0), screen_point(viewer, row, col1)
    qtbot.mousePress(native, Qt.LeftButton, pos=p0)
    for k in range(1, 9):
        qtbot.mouseMove(native, QPoint(p0.x() + (p1.x() - p0.x()) * k // 8, p0.y()))
    qtbot.mouseRelease(native, Qt.LeftButton, pos=p1)


def choose_mode(qtbot, widget, mode: str) -> None:
    """Pick the mode in the Mode box with the keyboard (Up / Down on the focused combo box)."""
    box = widget.segment_panel.mode
    box.setFocus()
    key = Qt.Key_Up if box.findText(mode) < box.currentIndex() else Qt.Key_Down
    while box.currentText() != mode:
        qtbot.keyClick(box, key)
    assert box.currentText() == mode


def errors_since(widget, seen: int) -> list[str]:
    return [text for level, text in widget.session.messages.history[seen:] if level == "error"]


@pytest.fixture
def annotator(make_napari_viewer, qtbot, tmp_path):
    """A shown viewer with the dock; the embedded default model loaded by clicking 'Load model'."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    widget = SamspWidget(viewer, project=tmp_path / "project")
    viewer.window.add_dock_widget(widget, name="SAM-SP")
    from superqt import QCollapsible

    for section in widget.findChildren(QCollapsible):  # the user opens the collapsed sections
        section.expand(animate=False)
    qtbot.waitUntil(widget.model_panel.load_button.isVisible, timeout=10_000)
    assert widget.model_panel.source.currentData() == "default"
    click(qtbot, widget.model_panel.load_button)
    wait(qtbot, widget)
    assert widget.session.loaded is not None and not widget.session.loaded.is_random
    qtbot.wait(50)
    yield viewer, widget
    # Shown with a failing test: what the user was told.
    for level, text in widget.session.messages.history:
        print(f"{level}: {text}")


def nuclei_image(seed=1, shape=(128, 128), n=6):
    image, gt = synthetic_nuclei(shape, n=n, seed=seed)
    return (image // 256).astype(np.uint8), gt


def open_image(viewer, widget, image, name):
    layer = viewer.add_image(image, name=name, rgb=image.ndim == 3 and image.shape[-1] in (3, 4))
    assert widget.use_layer(layer) is not None
    viewer.reset_view()
    return layer


def write_folder(folder: Path, n=4, rgb_every=0) -> list[Path]:
    from napari_samsp.io import write_png_atomic

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        image, _ = nuclei_image(seed=20 + k, shape=(96, 96), n=3 + k)
        if rgb_every and k % rgb_every == 1:
            image = np.stack([image, image // 2, image], axis=-1)
        paths.append(write_png_atomic(folder / f"img{k}.png", image))
    return paths


# -- break 1 -------------------------------------------------------------------------------
def test_break1_mode_sticks_and_a_new_model_never_overwrites_corrected_labels(annotator, qtbot):
    viewer, w = annotator
    assert w.session.loaded.card["mode"] == "instance"
    image, _ = nuclei_image()
    open_image(viewer, w, image, "cells")
    choose_mode(qtbot, w, "semantic")
    press(qtbot, viewer, Qt.Key_S)  # Shift+S: auto-segment
    wait(qtbot, w)
    labels = viewer.layers["cells labels"]
    assert set(np.unique(labels.data)) <= {0, 1}
    brush_stroke(qtbot, viewer, labels, 10, 10, 40, label=1)  # the user's correction
    corrected = labels.data.copy()
    assert (corrected[8:13, 10:40] == 1).all()
    press(qtbot, viewer, Qt.Key_D)  # Shift+D: send
    assert len(w.session.store) == 1

    # Reloading the model (a model change) keeps the user's mode.
    click(qtbot, w.model_panel.load_button)
    wait(qtbot, w)
    assert w.segment_panel.mode.currentText() == "semantic"

    # A new version (here: the same weights saved as a project version) is activated from the list.
    loaded = w.session.loaded
    versions = w.session.versions
    card = {k: v for k, v in loaded.card.items() if k != "version"}
    info = versions.add(loaded.model, {**card, "parent": loaded.card["version"]})
    w.train_panel.refresh_versions()
    w.train_panel.versions_list.setCurrentRow(0)
    click(qtbot, w.train_panel.use_button)
    wait(qtbot, w)
    wait(qtbot, w)  # the re-segmentation that follows the switch
    assert w.session.model_id == info.version
    assert w.segment_panel.mode.currentText() == "semantic"
    np.testing.assert_array_equal(labels.data, corrected)  # the user's work is untouched
    preview = viewer.layers["cells preview"]
    assert preview.data.shape == corrected.shape and preview.data.any()
    assert "unchanged" in w.status.text()

    # Roll back to the base model: still untouched.
    click(qtbot, w.train_panel.rollback_button)
    wait(qtbot, w)
    wait(qtbot, w)
    assert versions.active() is None
    np.testing.assert_array_equal(labels.data, corrected)

    # The user decides: 'Use preview' takes the new labels, Shift+U brings the corrected ones back.
    click(qtbot, w.segment_panel.use_preview_button)
    assert "cells preview" not in [lay.name for lay in viewer.layers]
    assert not np.array_equal(labels.data, corrected)
    press(qtbot, viewer, Qt.Key_U)
    np.testing.assert_array_equal(labels.data, corrected)


def test_break1_an_uncorrected_image_is_resegmented_in_place(annotator, qtbot):
    viewer, w = annotator
    image, _ = nuclei_image(seed=3)
    open_image(viewer, w, image, "plain")
    press(qtbot, viewer, Qt.Key_S)
    wait(qtbot, w)
    labels = viewer.layers["plain labels"]
    labels.data[...] = 0  # stands for "the old model's proposal": make the re-segmentation visible
    labels.refresh()
    w.session.edits.set_proposal(w.session.workspace, None, labels.data)
    loaded = w.session.loaded
    info = w.session.versions.add(loaded.model, {k: v for k, v in loaded.card.items() if k != "version"})
    w.train_panel.refresh_versions()
    w.train_panel.versions_list.setCurrentRow(0)
    click(qtbot, w.train_panel.use_button)
    wait(qtbot, w)
    wait(qtbot, w)
    assert w.session.model_id == info.version
    assert labels.data.any()  # re-segmented in place: nothing of the user's was there
    assert "plain preview" not in [lay.name for lay in viewer.layers]


# -- break 2 -------------------------------------------------------------------------------
def test_break2_the_live_training_plot_shows_the_whole_run(annotator, qtbot):
    viewer, w = annotator
    image, gt = nuclei_image(seed=5, shape=(96, 96))
    open_image(viewer, w, image, "train me")
    press(qtbot, viewer, Qt.Key_S)
    wait(qtbot, w)
    brush_stroke(qtbot, viewer, viewer.layers["train me labels"], 50, 10, 30, label=1)
    press(qtbot, viewer, Qt.Key_D)
    assert w.session.store_count() == 1
    steps = w.train_panel.steps
    steps.setFocus()
    steps.selectAll()
    qtbot.keyClicks(steps, "6")
    assert steps.value() == 6
    click(qtbot, w.train_panel.start_button)
    wait(qtbot, w, "train", timeout=180_000)
    wait(qtbot, w)
    qtbot.wait(400)  # the plot redraws at most 4x a second
    plot = w.train_panel.plot
    last = max(step for step, _ in plot.loss)
    assert last >= 5
    lo, hi = plot.ax.get_xlim()
    assert lo <= 0 and hi >= last  # every step is inside the visible x-range
    assert len(plot.ax.get_lines()[0].get_xdata()) == len(plot.loss)


# -- break 6 -------------------------------------------------------------------------------
def test_break6_queue_shows_expected_dice_in_the_same_order_as_samsp_rank(annotator, qtbot, tmp_path, monkeypatch, capsys):
    from qtpy.QtWidgets import QFileDialog

    from napari_samsp import cli

    viewer, w = annotator
    folder = tmp_path / "queue"
    write_folder(folder, n=4)
    choose_mode(qtbot, w, "semantic")
    click(qtbot, w.queue_panel.rank)  # tick "rank by expected Dice"
    assert w.queue_panel.rank.isChecked()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    click(qtbot, w.queue_panel.open_button)
    wait(qtbot, w)
    wait(qtbot, w)
    rows = [w.queue_panel.items.item(i).text() for i in range(w.queue_panel.items.count())]
    assert len(rows) == 4 and all("expected Dice" in r for r in rows), rows
    gui_order = [p.name for p in w.session.queue.items]
    dice = [w.session.queue.scores[p]["expected_dice"] for p in w.session.queue.items]
    assert "lowest expected Dice first" in w.queue_panel.info.text()

    capsys.readouterr()
    assert cli.main(["rank", str(folder), "--mode", "semantic"]) == 0
    cli_rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [Path(r["image"]).name for r in cli_rows] == gui_order
    np.testing.assert_allclose([r["expected_dice"] for r in cli_rows], dice, atol=1e-6)
    # What the dock says for each image is the expected Dice the CLI prints.
    for row, r in zip(rows, cli_rows):
        assert f"{r['expected_dice']:.2f}" in row


# -- break 7 -------------------------------------------------------------------------------
def test_break7_one_image_and_its_layers_at_a_time(annotator, qtbot, tmp_path):
    viewer, w = annotator
    # Two images opened by hand, chosen one after the other in the Image box.
    a, _ = nuclei_image(seed=7)
    b, _ = nuclei_image(seed=8)
    open_image(viewer, w, a, "first")
    open_image(viewer, w, b, "second")
    visible = {lay.name for lay in viewer.layers if lay.visible}
    assert visible == {"second", "second labels", "second prompts", "second boxes"}, visible

    # The queue: gray and RGB images, some edited and not sent; Shift+N each time.
    folder = tmp_path / "mixed"
    write_folder(folder, n=4, rgb_every=2)
    w.open_folder(folder, rank=False)
    wait(qtbot, w)
    for k in range(3):
        current = w.session.workspace
        brush_stroke(qtbot, viewer, current.labels, 20, 20, 40, label=1)  # unsent edits
        press(qtbot, viewer, Qt.Key_N)
        wait(qtbot, w)
        ws = w.session.workspace
        assert ws is not current or k == 3
        visible = [lay for lay in viewer.layers if lay.visible]
        assert {lay.name for lay in visible} == {ws.name, *(f"{ws.name} {s}" for s in ("labels", "prompts", "boxes"))}
    assert w.session.queue.index == 3


# -- break 8 -------------------------------------------------------------------------------
def test_break8_finetune_that_kept_the_base_adds_no_version(annotator, qtbot, monkeypatch):
    import dataclasses

    import napari_samsp.finetune.job as job

    viewer, w = annotator
    image, gt = nuclei_image(seed=9, shape=(64, 64))
    w.session.store.add(image, gt, source="x")
    w.session.store_changed.emit()
    before = w.session.loaded

    def kept(base, data_dirs, config=None, callbacks=None, **kwargs):  # kwargs: val_fraction (run_finetune passes it)
        card = {k: v for k, v in base.card.items() if k != "version"}
        return job.FineTuneResult(base.model, {**card, "metrics": {"kept_base": True}}, {"dice": 0.5}, {"dice": 0.5}, True)

    monkeypatch.setattr(job, "finetune_model", kept)
    seen = len(w.session.messages.history)
    click(qtbot, w.train_panel.start_button)
    wait(qtbot, w, "train")
    wait(qtbot, w)
    assert not errors_since(w, seen)
    assert w.session.versions.list() == [] and w.session.versions.active() is None
    assert w.session.loaded is before
    assert "no new version" in w.train_panel.result.text()
    assert dataclasses.is_dataclass(job.FineTuneOutcome)


def test_break8_cancelling_autosegmentation_is_not_an_error(annotator, qtbot):
    viewer, w = annotator
    stack = synthetic_nuclei_stack((12, 128, 128), seed=2)[0]
    open_image(viewer, w, (stack // 256).astype(np.uint8), "stack")
    seen = len(w.session.messages.history)
    click(qtbot, w.segment_panel.segment_all_button)
    progress = getattr(w, "progress", None)
    shown = progress is not None and progress.isVisible()  # auto-segmentation progress in the dock
    click(qtbot, w.cancel_button)
    wait(qtbot, w)
    assert not errors_since(w, seen), errors_since(w, seen)
    assert "cancel" in w.status.text() and "ff6b6b" not in w.status.styleSheet()
    assert shown and not progress.isVisible()


def test_break8_status_counts_regions_and_dock_shows_progress_without_toasts(annotator, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, w = annotator
    toasts = len(notification_manager.records)
    image, _ = nuclei_image(seed=11, n=8)
    open_image(viewer, w, image, "regions")
    choose_mode(qtbot, w, "semantic")
    press(qtbot, viewer, Qt.Key_S)
    progress = getattr(w, "progress", None)
    shown = progress is not None and progress.isVisible()
    wait(qtbot, w)
    from scipy import ndimage

    n = ndimage.label(viewer.layers["regions labels"].data > 0)[1]
    assert n > 1
    assert f"{n} foreground regions" in w.status.text()
    assert shown and not progress.isVisible()  # the dock's progress bar came and went
    qtbot.waitUntil(lambda: f"Regions: <b>{n}</b>" in w.counts.text(), timeout=3000)
    press(qtbot, viewer, Qt.Key_D)  # send: a message, in the dock, not a toast
    assert "sent image" in w.status.text()
    assert len(notification_manager.records) == toasts


def test_break8_sends_record_what_was_changed(annotator, qtbot, tmp_path):
    viewer, w = annotator
    folder = tmp_path / "q"
    write_folder(folder, n=3)
    w.open_folder(folder, rank=False)
    wait(qtbot, w)
    store = w.session.store
    # Sent unchanged (Shift+D), then the next image (Shift+N).
    press(qtbot, viewer, Qt.Key_D)
    first = store.entries()[-1]
    assert first.corrected is False
    assert first.edits == {"pixels_edited": 0, "clicks": 0, "boxes": 0, "brush_strokes": 0}
    press(qtbot, viewer, Qt.Key_N)
    wait(qtbot, w)
    # A click in the prompts layer and a brush stroke, then Shift+D.
    ws = w.session.workspace
    viewer.layers.selection.active = ws.points
    ws.points.mode = "add"
    left_click_canvas(qtbot, viewer, 48, 48)
    assert len(ws.points.data) == 1
    brush_stroke(qtbot, viewer, ws.labels, 80, 5, 30, label=int(ws.labels.data.max()) + 1)
    press(qtbot, viewer, Qt.Key_D)
    second = store.entries()[-1]
    assert second.stem != first.stem and second.corrected is True
    assert second.edits["clicks"] == 1 and second.edits["brush_strokes"] >= 1 and second.edits["pixels_edited"] > 0
    assert second.edits["boxes"] == 0
    manifest = [json.loads(line) for line in (store.root / "manifest.jsonl").read_text().splitlines()]
    assert manifest[-1]["edits"] == second.edits


def test_break8_transparent_pixels_are_not_segmented(annotator, qtbot):
    viewer, w = annotator
    gray, _ = nuclei_image(seed=12, shape=(128, 128), n=12)
    rgba = np.zeros((128, 128, 4), np.uint8)
    rgba[..., :3] = gray[..., None]
    rgba[..., 3] = 255
    rgba[:, 64:, 3] = 0  # the right half is fully transparent (its colour channels still hold nuclei)
    open_image(viewer, w, rgba, "rgba")
    press(qtbot, viewer, Qt.Key_S)
    wait(qtbot, w)
    labels = viewer.layers["rgba labels"].data
    assert labels[:, :64].any()  # the visible half is segmented
    assert not labels[:, 64:].any()  # the transparent half is background


def test_break8_send_without_labels_layer_and_rollback_on_base_say_what_happened(annotator, qtbot):
    viewer, w = annotator
    image, _ = nuclei_image(seed=13)
    open_image(viewer, w, image, "gone")
    labels = viewer.layers["gone labels"]
    viewer.layers.selection.active = labels
    viewer.layers.selection = {labels}
    click(qtbot, viewer.window._qt_viewer.layerButtons.deleteButton)
    assert "gone labels" not in [lay.name for lay in viewer.layers]
    press(qtbot, viewer, Qt.Key_D)
    error = w.session.messages.last("error")
    assert "deleted" in error and "empty" not in error
    click(qtbot, w.train_panel.rollback_button)
    text = w.status.text()
    assert "nothing to roll back" in text and "base model" in text and "version" not in text


def test_break8_no_private_napari_api():
    root = Path(__file__).resolve().parents[1] / "napari_samsp"
    users = [p.name for p in root.rglob("*.py") if "_reset_history" in p.read_text(encoding="utf-8")]
    assert not users, users


# -- also expected by napari users -------------------------------------------------------------
def test_keyboard_only_flow_counts_and_model_lineage(annotator, qtbot, tmp_path):
    viewer, w = annotator
    folder = tmp_path / "kbd"
    write_folder(folder, n=3)
    w.open_folder(folder, rank=False)
    wait(qtbot, w)
    assert w.session.queue.index == 0
    labels = w.session.workspace.labels
    n0 = len(np.unique(labels.data[labels.data > 0]))
    assert n0 > 0
    qtbot.waitUntil(lambda: f"Objects: <b>{n0}</b>" in w.counts.text(), timeout=3000)
    assert "Corrected images: <b>0</b>" in w.counts.text()
    press(qtbot, viewer, Qt.Key_U)  # undo the auto-segmentation
    assert not w.session.workspace.labels.data.any()
    qtbot.waitUntil(lambda: "Objects: <b>0</b>" in w.counts.text(), timeout=3000)
    press(qtbot, viewer, Qt.Key_U)
    press(qtbot, viewer, Qt.Key_N)  # next image without sending
    wait(qtbot, w)
    assert w.session.queue.index == 1
    brush_stroke(qtbot, viewer, w.session.workspace.labels, 30, 10, 40, label=99)
    press(qtbot, viewer, Qt.Key_D)  # send
    qtbot.waitUntil(lambda: "Corrected images: <b>1</b>" in w.counts.text(), timeout=3000)
    assert "Queue: 1/3 sent" in w.counts.text()
    press(qtbot, viewer, Qt.Key_N)
    wait(qtbot, w)
    assert w.session.queue.index == 2
    press(qtbot, viewer, Qt.Key_Return)  # Shift+Enter: accept the last one as proposed
    wait(qtbot, w)
    assert len(w.session.store) == 2 and w.session.store_count() == 1  # 2 sent, 1 of them corrected
    qtbot.waitUntil(lambda: "Queue: 2/3 sent" in w.counts.text(), timeout=3000)

    # The model card says where the model came from.
    loaded = w.session.loaded
    card = {k: v for k, v in loaded.card.items() if k != "version"}
    v1 = w.session.versions.add(loaded.model, {**card, "parent": loaded.card["version"]})
    v2 = w.session.versions.add(loaded.model, {**card, "parent": v1.version})
    w.train_panel.refresh_versions()
    w.train_panel.versions_list.setCurrentRow(1)
    click(qtbot, w.train_panel.use_button)
    wait(qtbot, w)
    wait(qtbot, w)
    assert w.session.model_id == v2.version
    text = w.model_panel.card.text()
    assert f"version {v1.path.stem} ← embedded default ← {loaded.card['parent'][:8]}" in text
