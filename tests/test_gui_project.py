"""The plugin on a :class:`~napari_samsp.project.Project`: a project made by the API (or the CLI) opens in
the widget, one made in the widget opens with the API, and the ranked queue in every Mode."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_samsp._widget import SamspWidget  # noqa: E402
from napari_samsp.io import write_png_atomic  # noqa: E402
from napari_samsp.models.checkpoints import load_model  # noqa: E402
from napari_samsp.project import Project  # noqa: E402
from napari_samsp.sample_data_gen import synthetic_nuclei  # noqa: E402

from test_project import fill_store  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 30_000


def wait(qtbot, widget, slot=None, timeout=TIMEOUT):
    qtbot.waitUntil(lambda: widget.is_idle(slot), timeout=timeout)


def test_a_project_made_by_the_api_opens_in_the_plugin(make_napari_viewer, qtbot, tmp_path):
    root = tmp_path / "p"
    project = Project(root)
    fill_store(project.store, 2)
    micro = load_model("micro", device="cpu")
    info = project.versions.add_active(micro.model, {k: v for k, v in micro.card.items() if k != "version"})

    viewer = make_napari_viewer()
    w = SamspWidget(viewer, project=root)
    viewer.window.add_dock_widget(w, name="SAM-SP")
    assert w.project_edit.text() == str(root)
    assert "<b>2</b> corrected image" in w.correct_panel.counter.text()
    assert w.train_panel.versions_list.item(0).text().startswith("●")
    assert w.load_model("active version") is not None
    wait(qtbot, w)
    assert w.session.model_id == info.version
    assert w.session.predictor.cache.root == root / "cache"

    # ... and the other way: what the plugin sends lands where Project (and `samsp --project`) reads.
    other = tmp_path / "q"
    w.set_project(other)
    image, _ = synthetic_nuclei((48, 48), n=3, seed=2)
    ws = w.use_layer(viewer.add_image(image, name="nuclei"))
    ws.labels.data[5:15, 5:15] = 3
    ws.labels.refresh()
    assert w.send_corrections()
    reopened = Project(other)
    assert len(reopened.store) == 1 and reopened.store_count() == 1
    _, labels = reopened.store.load(reopened.store.entries()[0].stem)
    assert (labels == 3).sum() == 100


def test_the_ranked_queue_in_everything_mode(make_napari_viewer, qtbot, tmp_path):
    """Bug fixed: with Mode 'everything' the ranked queue raised ValueError in the GUI thread
    (ranking scores self-prompted masks: it now uses the card's mode)."""
    viewer = make_napari_viewer()
    w = SamspWidget(viewer, project=tmp_path / "p")
    viewer.window.add_dock_widget(w, name="SAM-SP")
    assert w.load_model("micro") is not None
    wait(qtbot, w)
    folder = tmp_path / "queue"
    for k in range(2):
        image, _ = synthetic_nuclei((48, 48), n=3, seed=20 + k)
        write_png_atomic(folder / f"im{k}.png", (image // 256).astype(np.uint8))
    w.segment_panel.mode.setCurrentText("everything")
    w.queue_panel.auto.setChecked(False)
    assert w.open_folder(folder, rank=True) is not None
    wait(qtbot, w)
    assert w.session.messages.last("error") is None
    queue = w.session.queue
    assert queue is not None and len(queue.scores) == 2  # ranked, not file order
