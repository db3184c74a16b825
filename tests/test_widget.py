"""GUI tests of the SAM-SP annotator widget: every action through the widget's public methods,
on the random micro model, under Xvfb (pytest-xvfb) with napari's ``make_napari_viewer``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

# Imported before any viewer exists: loads torchvision (and triton) before OpenGL (see _ui/compat.py).
from napari_samsp._widget import SHORTCUTS, SamspWidget  # noqa: E402
from napari_samsp.sample_data_gen import synthetic_nuclei, synthetic_nuclei_stack  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 30_000


@pytest.fixture
def annotator(make_napari_viewer, qtbot, tmp_path):
    """A viewer with the widget docked, the micro model loaded, project in tmp_path."""
    viewer = make_napari_viewer()
    widget = SamspWidget(viewer, project=tmp_path / "project")
    viewer.window.add_dock_widget(widget, name="SAM-SP")
    assert widget.load_model("micro") is not None
    wait(qtbot, widget)
    assert widget.session.loaded is not None and widget.session.loaded.is_random
    return viewer, widget


def wait(qtbot, widget, slot=None, timeout=TIMEOUT):
    qtbot.waitUntil(lambda: widget.is_idle(slot), timeout=timeout)


def last_error(widget) -> str | None:
    return widget.session.messages.last("error")


def test_2d_loop_segment_prompt_undo_send_export(annotator, qtbot, tmp_path):
    viewer, w = annotator
    # The model card warns about random weights.
    assert "Random weights" in w.model_panel.card.text()
    image, gt = synthetic_nuclei((96, 96), n=8, seed=1)  # 16-bit
    layer = viewer.add_image(image, name="nuclei")
    ws = w.use_layer(layer)
    assert ws is not None and {"nuclei labels", "nuclei prompts", "nuclei boxes"} <= {lay.name for lay in viewer.layers}

    # Auto-segment (instance mode) in a worker.
    w.segment_panel.mode.setCurrentText("instance")
    assert w.segment() is not None
    wait(qtbot, w)
    labels = viewer.layers["nuclei labels"]
    assert labels.data.shape == (96, 96)
    # the plane's embedding is kept for the clicks, and nothing else asks what the predictor holds
    emb = w.session.embeddings.get(w.session.predictor, (ws.key, None))
    assert emb is not None and emb.original_size == (96, 96)
    assert not w.session.predictor.is_image_set
    auto = labels.data.copy()

    # A new object from a positive click: decoded from the cached embedding at once.
    new_id = int(labels.selected_label)
    w.add_point(40, 50, positive=True)
    assert w.is_idle()
    assert (labels.data == new_id).any() or not np.array_equal(labels.data, auto)
    assert w.correct_panel.last_decode_s is not None
    assert ws.points.features["sign"].tolist() == ["positive"]
    # T toggles the sign of the next point; the negative point re-decodes with the previous logits.
    viewer.keymap[_key("T")](viewer)
    assert not w.correct_panel.sign_button.isChecked()
    w.session.workspace.add_point(45, 55)
    assert ws.points.features["sign"].tolist() == ["positive", "negative"]
    np.testing.assert_allclose(ws.points.face_color[1], [1.0, 0.2, 0.25, 1.0], atol=1e-6)
    # A box prompt also re-decodes; napari's own undo (Ctrl+Z) reverts that paint.
    before_box = labels.data.copy()
    ws.shapes.add_rectangles(np.array([[30, 40], [60, 70]]))
    assert w.session.editor is not None and w.session.editor.mask is not None
    labels.undo()
    np.testing.assert_array_equal(labels.data, before_box)
    # Deleting a prompt point re-decodes without it (the labels changed under the editor, so the
    # object restarts from them: one more entry in the widget's undo history).
    ws.points.selected_data = {1}
    ws.points.remove_selected()
    assert len(ws.points.data) == 1 and w.session.editor.mask is not None

    # Commit gives a new id; undo goes back to the labels before the object.
    w.commit_object()
    assert len(ws.points.data) == 0 and ws.shapes.nshapes == 0
    assert int(labels.selected_label) == int(labels.data.max()) + 1
    assert w.undo() and w.undo()
    np.testing.assert_array_equal(labels.data, auto)

    # Send corrections: the store holds the original 16-bit pixels and the labels.
    labels.data[10:20, 10:20] = 7
    labels.refresh()
    entries = w.send_corrections()
    assert entries and len(entries) == 1
    store = w.session.store
    img, lab = store.load(entries[0].stem)
    np.testing.assert_array_equal(img, image)
    assert img.dtype == np.uint16 and (lab == 7).sum() >= 100
    assert "<b>1</b> corrected image" in w.correct_panel.counter.text()

    # Export through the widget: TIFF, PNG and COCO.
    out = tmp_path / "export"
    for name in ("nuclei.tif", "nuclei.png", "nuclei.json"):
        written = w.export_labels(out / name)
        assert written and all(p.is_file() for p in written)
    coco = json.loads((out / "nuclei.json").read_text())
    assert coco["images"][0]["width"] == 96 and len(coco["annotations"]) == len(np.unique(labels.data)) - 1

    # Closing the viewer loses nothing already sent.
    viewer.close()
    from napari_samsp.store import AnnotationStore

    reopened = AnnotationStore(tmp_path / "project" / "store", create=False)
    assert len(reopened) == 1 and reopened.verify() == []


def _key(name: str):
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(name)


def test_rgb_and_stack_propagation(annotator, qtbot):
    viewer, w = annotator
    # RGB uint8 image: auto-segment works on the colour image.
    rgb = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    w.use_layer(viewer.add_image(rgb, name="rgb", rgb=True))
    w.segment()
    wait(qtbot, w)
    assert viewer.layers["rgb labels"].data.shape == (64, 80)
    assert last_error(w) is None

    # 3D stack: all slices, then an object propagated from the middle slice.
    stack, _ = synthetic_nuclei_stack((6, 64, 64), n=5, seed=2)
    layer = viewer.add_image(stack, name="stack")
    ws = w.use_layer(layer)
    assert ws.is_stack
    w.segment_all()
    wait(qtbot, w)
    labels = viewer.layers["stack labels"]
    assert labels.data.shape == (6, 64, 64)
    viewer.dims.set_point(0, 3)
    assert ws.current_z() == 3
    labels.data[:] = 0
    labels.data[3, 20:40, 20:40] = 5  # the object to carry over
    labels.refresh()
    labels.selected_label = 5
    assert w.propagate() is not None
    wait(qtbot, w)
    assert last_error(w) is None, last_error(w)
    touched = [z for z in range(6) if (labels.data[z] == 5).any()]
    assert 3 in touched
    # Prompts on a slice only use that slice; send every annotated slice.
    w.add_point(30, 30)
    wait(qtbot, w)
    assert ws.points.data[-1][0] == 3
    entries = w.send_corrections(all_slices=True)
    assert entries and {e.slice_index for e in entries} == set(touched) | {
        z for z in range(6) if labels.data[z].any()
    }
    # Undo restores the stack before the propagation step (history per action).
    assert w.undo()
    # Embeddings are kept per plane: back on slice 3 after a click on slice 4, a click decodes at once.
    predictor = w.session.predictor
    assert w.session.embeddings.get(predictor, (ws.key, 3)) is not None
    viewer.dims.set_point(0, 4)
    w.add_point(30, 30)
    wait(qtbot, w)
    assert w.session.embeddings.get(predictor, (ws.key, 4)) is not None
    viewer.dims.set_point(0, 3)
    w.add_point(32, 32)
    assert w.is_idle() and last_error(w) is None  # no embedding worker: decoded from slice 3's kept embedding
    assert w.session.editor is not None and w.session.editor_key[:2] == (ws.key, 3)


def test_bad_input_is_reported_not_raised(annotator, qtbot, tmp_path):
    viewer, w = annotator
    # A non-image layer.
    pts = viewer.add_points(np.zeros((1, 2)), name="not an image")
    assert w.use_layer(pts) is None
    assert "not an Image layer" in last_error(w)
    # A 5D image.
    five = viewer.add_image(np.zeros((2, 2, 3, 16, 16), np.uint8), name="five-d")
    assert w.use_layer(five) is None
    assert "2D image or a 3D stack" in last_error(w)
    # A weights file of another architecture: WeightsError, the micro model stays loaded.
    import torch

    bad = tmp_path / "other.pth"
    torch.save({"backbone.conv.weight": torch.zeros(4, 3, 3, 3)}, bad)
    before = w.session.loaded
    w.load_model(str(bad))
    wait(qtbot, w)
    assert "could not load" in last_error(w) and "previous model stays loaded" in last_error(w)
    assert w.session.loaded is before
    # Fine-tuning with an empty store.
    assert w.start_finetune(steps=2) is None
    assert "store" in last_error(w) and "empty" in last_error(w)
    # Sending an empty mask.
    image, _ = synthetic_nuclei((64, 64), n=4, seed=3)
    ws = w.use_layer(viewer.add_image(image, name="img"))
    assert w.send_corrections() is None
    assert "empty" in last_error(w)
    # A labels layer edited into another shape: every action refuses, nothing changes.
    ws.labels.data = np.zeros((10, 10), np.uint32)
    for action in (w.send_corrections, w.segment):
        assert action() is None
        assert "restore its shape" in last_error(w)
    ws.add_point(5, 5)
    assert "restore its shape" in last_error(w)
    assert ws.labels.data.shape == (10, 10) and len(w.session.store) == 0
    assert not any(level == "error" and "unexpected" in text for level, text in w.session.messages.history)


def test_finetune_failure_cancel_and_success(annotator, qtbot, monkeypatch):
    viewer, w = annotator
    image, gt = synthetic_nuclei((64, 64), n=5, seed=4)
    store = w.session.store
    for k in range(3):
        store.add(np.roll(image, 8 * k, axis=1), np.roll(gt, 8 * k, axis=1), source=f"img{k}")
    w.session.store_changed.emit()
    import napari_samsp.finetune.job as job
    from napari_samsp.finetune.loop import TrainingCancelled, TrainingDiverged

    versions = w.session.versions
    model_before = w.session.loaded

    # Fails mid-way: clean message, nothing activated, buttons usable again.
    def diverging(base, data_dirs, versions, config=None, callbacks=None, **kwargs):
        callbacks.progress(1, config.steps)
        callbacks.on_loss(1, {"total": 1.0})
        raise TrainingDiverged("loss was NaN/inf for 10 steps in a row at step 3; stopped")

    monkeypatch.setattr(job, "run_finetune", diverging)
    assert w.start_finetune(steps=5) is not None
    wait(qtbot, w, "train")
    assert "fine-tuning failed" in last_error(w) and "NaN" in last_error(w)
    assert versions.active() is None and w.session.loaded is model_before
    assert w.train_panel.start_button.isEnabled()

    # Cancel while running.
    def slow(base, data_dirs, versions, config=None, callbacks=None, **kwargs):
        import time

        for step in range(10_000):
            if callbacks.should_cancel():
                raise TrainingCancelled(f"cancelled at step {step}")
            time.sleep(0.005)

    monkeypatch.setattr(job, "run_finetune", slow)
    assert w.start_finetune(steps=5) is not None
    w.cancel_finetune()
    wait(qtbot, w, "train")
    assert "cancelled" in w.session.messages.last("info")
    assert versions.active() is None and w.session.loaded is model_before

    # The real thing: a few steps on the micro model; the new version becomes active.
    monkeypatch.undo()
    layer = viewer.add_image(image, name="work")
    w.use_layer(layer)
    seen = len(w.session.messages.history)
    assert w.start_finetune(steps=2) is not None
    wait(qtbot, w, "train", timeout=120_000)
    wait(qtbot, w)
    errors = [text for level, text in w.session.messages.history[seen:] if level == "error"]
    assert not errors, errors
    assert "→" in w.train_panel.result.text()
    assert w.train_panel.plot.loss  # live loss curve got points
    if w.train_panel.last_outcome.kept_base:
        # No step beat the base (2 steps of a random model rarely do): no new version, model unchanged.
        assert versions.list() == [] and versions.active() is None and w.session.loaded is model_before
        assert "no new version" in w.train_panel.result.text()
        return
    active = versions.active()
    assert active is not None
    assert w.session.loaded is not model_before and w.session.model_id == active.version
    assert viewer.layers["work labels"].data.shape == (64, 64)  # re-segmented with the new model
    # Roll back to the base model.
    assert w.rollback() is not None
    wait(qtbot, w)
    assert versions.active() is None and w.session.loaded.is_random


def test_self_improve_on_the_current_image(annotator, qtbot, monkeypatch):
    viewer, w = annotator
    versions = w.session.versions
    # Empty store: a clear one-line error, no task, no version.
    assert w.self_improve(rounds=1, steps=2) is None
    assert "corrected masks" in last_error(w) and "empty" in last_error(w)
    assert versions.list() == []
    assert "validation Dice" in w.train_panel.improve_button.toolTip()

    image, gt = synthetic_nuclei((64, 64), n=5, seed=5)
    for k in range(4):
        w.session.store.add(np.roll(image, 8 * k, axis=1), np.roll(gt, 8 * k, axis=1), source=f"img{k}")
    w.session.store_changed.emit()
    layer = viewer.add_image(np.roll(image, 4, axis=0), name="unlabeled")
    w.use_layer(layer)
    seen = len(w.session.messages.history)
    assert w.self_improve(rounds=1, steps=2) is not None
    wait(qtbot, w, "train", timeout=180_000)
    wait(qtbot, w)
    errors = [text for level, text in w.session.messages.history[seen:] if level == "error"]
    assert not errors, errors
    infos = [text for level, text in w.session.messages.history[seen:] if level == "info"]
    assert any("self-improvement" in text for text in infos), infos
    assert "self-improvement" in w.train_panel.result.text()
    active = versions.active()
    if active is not None:  # a kept round becomes the active model
        assert w.session.model_id == active.version
    else:
        assert versions.list() == [] and w.session.loaded.is_random
    assert w.train_panel.improve_button.isEnabled()

    # A kept round (forced here: the random micro model rarely gains in 2 steps) becomes the active version.
    import napari_samsp.reward.improve as improve

    real = improve.self_improve

    def kept(*args, **kwargs):
        report = real(*args, **kwargs)
        report.rounds[0].accepted = True
        return report

    monkeypatch.setattr(improve, "self_improve", kept)
    n_before = len(versions.list())
    assert w.self_improve(rounds=1, steps=2) is not None
    wait(qtbot, w, "train", timeout=180_000)
    wait(qtbot, w)
    active = versions.active()
    assert active is not None and len(versions.list()) == n_before + 1
    assert w.session.model_id == active.version and not w.session.loaded.is_random
    assert w.train_panel.versions_list.item(0).text().startswith("●")


def test_queue_shortcuts_sample_data_reader_writer(annotator, qtbot, tmp_path):
    viewer, w = annotator
    from napari_samsp.io import write_png_atomic

    folder = tmp_path / "queue"
    for k in range(3):
        image, _ = synthetic_nuclei((48, 48), n=3, seed=10 + k)
        write_png_atomic(folder / f"im{2 - k}.png", (image // 256).astype(np.uint8))  # names: not the ranked order
    assert w.open_folder(folder, rank=True) is not None  # ranked by the self-reward, in a worker
    wait(qtbot, w)
    # the queue's order is the ranking's (lowest expected Dice first) with the plugin's options, not file order
    from napari_samsp.predictor import Predictor
    from napari_samsp.reward import rank_paths
    from napari_samsp.work_queue import rank_options

    loaded = w.session.loaded
    options = rank_options(loaded.model_card, w.segment_panel.mode.currentText(), None)
    expected = [Path(r["image"]).name for r in rank_paths(Predictor(loaded.model, loaded.model_id),
                                                          sorted(folder.glob("*.png")), **options)]
    assert sorted(expected) == ["im0.png", "im1.png", "im2.png"] and expected != sorted(expected)
    assert [p.name for p in w.session.queue.items] == expected
    first = w.queue_panel.queue_layer
    name0 = w.session.queue.items[0].stem
    assert first.name == name0 and first.metadata["samsp_path"].endswith(f"{name0}.png")
    assert viewer.layers[f"{name0} labels"].data.shape == (48, 48)
    viewer.layers[f"{name0} labels"].data[5:15, 5:15] = 3
    assert w.send_corrections()
    assert w.next_image() is not None
    wait(qtbot, w)
    assert name0 not in [lay.name for lay in viewer.layers]  # sent: its layers are reused for the next image
    assert w.next_image() is not None
    wait(qtbot, w)
    assert w.next_image() is None
    assert "queue finished" in w.session.messages.last("info")

    # Every documented shortcut is bound on the viewer.
    for key in SHORTCUTS:
        assert _key(key) in viewer.keymap

    # npe2 contributions: sample data, the folder reader, the labels writers.
    viewer.open_sample("napari-samsp", "ultrasound")
    assert "synthetic ultrasound" in viewer.layers
    layers = viewer.open(str(folder), plugin="napari-samsp")
    assert layers and layers[0].data.shape == (3, 48, 48)
    last = w.session.queue.items[-1].stem
    saved = viewer.layers[f"{last} labels"].save(str(tmp_path / "w.json"), plugin="napari-samsp")
    assert saved and json.loads(Path(saved[0]).read_text())["images"]


def test_closing_the_widget_unbinds_its_shortcuts(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = SamspWidget(viewer, project=tmp_path / "project")
    assert all(_key(key) in viewer.keymap for key in SHORTCUTS)
    widget.close()  # closeEvent: stop the tasks, unbind the keys (their callbacks hold the widget)
    assert not any(_key(key) in viewer.keymap for key in SHORTCUTS)
