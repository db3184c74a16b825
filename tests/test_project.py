"""The Qt-free :class:`~napari_samsp.project.Project`: the plugin's on-disk layout, loading the active
model, fine-tuning and self-improvement into new versions, and the ranked queue (micro models)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from test_finetune import disc_image, job_config

from napari_samsp.errors import DataLayoutError
from napari_samsp.finetune.versions import ModelVersions
from napari_samsp.models.checkpoints import load_model
from napari_samsp.project import Project, parent_chain, version_weights
from napari_samsp.store import AnnotationStore


def fill_store(store: AnnotationStore, n: int = 5, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, lab = disc_image(rng, 72, 88)
        store.add(img, lab, source=f"/data/cells{i}.png", model_version="base")


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_project_written_the_old_way_opens_unchanged(tmp_path):
    """The layout `_ui/state.py` defined before the Project existed: store/, models/, cache/."""
    root = tmp_path / "old"
    fill_store(AnnotationStore(root / "store"), 2)
    micro = load_model("micro", device="cpu")
    versions = ModelVersions(root / "models")
    info = versions.add(micro.model, {k: v for k, v in micro.card.items() if k != "version"})
    versions.activate(info.version)

    project = Project(root)
    assert project.store_count() == 2 and len(project.store) == 2
    assert project.active_version().version == info.version
    loaded = project.load_active(device="cpu")
    assert loaded.model_id == info.version and Path(loaded.source) == info.path
    predictor = project.predictor(loaded)
    assert predictor.cache.root == root / "cache"
    predictor.set_image(np.zeros((40, 50), np.uint8))
    assert any((root / "cache").iterdir())  # embeddings land where the plugin kept them


def test_the_project_api_writes_the_plugins_layout(tmp_path):
    from napari_samsp._ui.state import Session

    root = tmp_path / "new"
    project = Project(root)
    # Asking questions creates nothing.
    assert project.store_count() == 0 and project.active_version() is None and not project.can_roll_back()
    assert project.lineage({"parent": "abc"}) == ["abc"] and not root.exists()

    fill_store(project.store, 1)
    micro = load_model("micro", device="cpu")
    info = project.versions.add_active(micro.model, {k: v for k, v in micro.card.items() if k != "version"})
    files = tree(root)
    assert {"store/manifest.jsonl", "models/active.json", f"models/versions/{info.path.name}"} <= set(files)
    assert info.path.name.startswith("001-")

    session = Session(None, root)  # the plugin's session on the same folder
    assert session.store_count() == 1 and session.versions.active().version == info.version
    assert session.project.root == root and str(session.project) == str(root)
    assert project.can_roll_back() and project.versions.previous() == [None]


def test_a_file_is_not_a_project(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataLayoutError, match="is a file"):
        Project(tmp_path / "f")


def test_load_active_falls_back_to_the_base(tmp_path):
    project = Project(tmp_path / "p")
    loaded = project.load_active(device="cpu", base="micro")
    assert loaded.is_random and loaded.model_card.config_name == "micro"
    assert not (tmp_path / "p").exists()


def test_finetune_adds_and_activates_a_version(tmp_path):
    project = Project(tmp_path / "p")
    fill_store(project.store)
    base = load_model("micro", device="cpu")
    outcome = project.finetune(base, job_config(2))
    info = outcome.version
    assert info is not None and project.active_version().version == info.version
    assert info.path.parent == project.models_dir / "versions"
    assert info.card["parent"] == base.card["version"]
    assert project.load_active(device="cpu").model_id == info.version
    # The lineage names the project's version by its file.
    child = {"parent": info.version}
    assert project.lineage(child)[0] == f"version {info.path.stem}"


def _force_rounds(monkeypatch, accepted: bool) -> None:
    """Run the real self-improvement, then set its round's verdict (2 steps on a random model rarely gain)."""
    import napari_samsp.reward.improve as improve

    real = improve.self_improve

    def forced(*args, **kwargs):
        report = real(*args, **kwargs)
        for r in report.rounds:
            r.accepted = accepted
        return report

    monkeypatch.setattr(improve, "self_improve", forced)


@pytest.mark.parametrize("accepted", [True, False])
def test_self_improve_adds_a_version_only_for_a_kept_round(tmp_path, monkeypatch, accepted):
    from napari_samsp.reward.improve import ImproveConfig

    project = Project(tmp_path / "p")
    fill_store(project.store, 4)
    base = load_model("micro", device="cpu")
    rng = np.random.default_rng(9)
    unlabeled = [disc_image(rng, 64, 64)[0] for _ in range(2)]
    _force_rounds(monkeypatch, accepted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = project.self_improve(base, unlabeled, rounds=1, config=ImproveConfig(steps=2, batch_size=2))
    assert outcome.report.improved is accepted
    if accepted:
        assert outcome.version is not None
        assert project.active_version().version == outcome.version.version
        assert [v.version for v in project.versions.list()] == [outcome.version.version]
    else:
        assert outcome.version is None and project.active_version() is None
        assert project.versions.list() == []


def test_not_in_store_drops_sent_images(tmp_path):
    project = Project(tmp_path / "p")
    paths = [Path("/data/cells0.png"), Path("/data/other.png")]
    assert project.not_in_store(paths) == paths  # no store yet
    fill_store(project.store, 1)
    assert project.not_in_store(paths) == [Path("/data/other.png")]


def test_rank_is_calibrated_on_the_projects_store(tmp_path):
    from napari_samsp.reward import rank_paths
    from napari_samsp.work_queue import rank_options

    folder = tmp_path / "queue"
    folder.mkdir()
    from PIL import Image

    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(disc_image(rng, 64, 72)[0]).save(folder / f"q{i}.png")
    paths = sorted(folder.glob("*.png"))
    project = Project(tmp_path / "p")
    loaded = load_model("micro", device="cpu")
    predictor = project.predictor(loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = list(project.rank(predictor, paths, loaded.model_card))
        assert {row["calibrated"] for row in bare} == {False}  # no store yet: nothing to calibrate on
        fill_store(project.store, 6)
        rows = list(project.rank(predictor, paths, loaded.model_card))
        explicit = list(rank_paths(predictor, [str(p) for p in paths],
                                   **rank_options(loaded.model_card, None, project.store_dir)))
        queue = project.ranked_queue(folder, predictor, loaded.model_card)
    assert {row["calibrated"] for row in rows} == {True}
    assert rows == explicit
    assert [p.name for p in queue.items] == [Path(r["image"]).name for r in rows]


def test_parent_chain_and_version_weights(tmp_path):
    known = {"b": ("version 002", {"parent": "a"}), "a": ("version 001", {"parent": "base-model-id"})}
    assert parent_chain({"parent": "b"}, known) == ["version 002", "version 001", "base-mod"]
    assert parent_chain({"parent": "x"}, {"x": ("x", {"parent": "x"})}) == ["x"]  # a loop ends
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "w.safetensors").write_bytes(b"")
    assert version_weights(folder) == folder / "w.safetensors"
    assert version_weights(folder / "w.safetensors") == folder / "w.safetensors"


def test_the_default_project_follows_the_environment(monkeypatch, tmp_path):
    from napari_samsp.project import DEFAULT_PROJECT, default_project

    monkeypatch.setenv("SAMSP_PROJECT", str(tmp_path / "env"))
    assert default_project() == tmp_path / "env"
    monkeypatch.delenv("SAMSP_PROJECT")
    assert default_project() == DEFAULT_PROJECT
    assert os.fspath(Project(tmp_path)) == str(tmp_path)
