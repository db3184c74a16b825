"""``samsp ... --project DIR``: the CLI works on the plugin's project (its store, versions and cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from test_cli import run, write_inputs
from test_project import fill_store

from napari_samsp.project import Project


def project_with_store(root: Path, n: int = 5) -> Project:
    project = Project(root)
    fill_store(project.store, n)
    return project


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("samsp: warning:")]
    assert len(lines) == 1 and lines[0].startswith("samsp: error:"), err
    return lines[0]


def labels_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_finetune_project_adds_a_version_that_segment_project_uses(tmp_path, capsys):
    project = project_with_store(tmp_path / "p")
    code, out, err = run(capsys, "finetune", "--project", project.root, "--model", "micro", "--steps", "2",
                         "--threads", "1", "--device", "cpu")
    assert code == 0, err
    versions = project.versions.list()
    assert len(versions) == 1
    first = project.active_version()
    assert first.version == versions[0].version and f"version {first.path.stem} is the active model" in out
    assert "final validation Dice" in out

    write_inputs(tmp_path / "in")
    code, _, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "seg", "--project", project.root,
                       "--threads", "1")
    assert code == 0, err
    assert f"version {first.path.stem}" in err  # says which model it used
    code, _, err2 = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "seg_v", "--model", first.path,
                        "--threads", "1")
    assert code == 0, err2
    by_project, by_path = labels_of(tmp_path / "seg"), labels_of(tmp_path / "seg_v")
    assert by_project.keys() == by_path.keys() == {"a_gray", "b_rgb"}
    assert all(np.array_equal(by_project[k], by_path[k]) for k in by_project)
    # The embeddings went to the project's cache, under the version's model id.
    cached = [d.name for d in (project.cache_dir).iterdir()]
    assert any(name.startswith(first.version[:8]) for name in cached), cached

    # A second fine-tune without --model continues from the active version; -o also writes a copy.
    out_file = tmp_path / "copy.safetensors"
    code, out, err = run(capsys, "finetune", "--project", project.root, "--steps", "2", "-o", out_file,
                         "--threads", "1", "--device", "cpu")
    assert code == 0, err
    second = project.active_version()
    assert second.version != first.version and second.card["parent"] == first.version
    assert len(project.versions.list()) == 2 and out_file.is_file()
    assert json.loads(out_file.with_suffix(".json").read_text())["version"] == second.version


def test_rank_project_uses_the_active_model_and_the_stores_calibration(tmp_path, capsys):
    project = project_with_store(tmp_path / "p", 6)
    code, _, err = run(capsys, "finetune", "--project", project.root, "--model", "micro", "--steps", "1",
                       "--threads", "1", "--device", "cpu")
    assert code == 0, err
    active = project.active_version()
    write_inputs(tmp_path / "in")

    code, out, err = run(capsys, "rank", tmp_path / "in", "--project", project.root, "--threads", "1")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and {r["calibrated"] for r in rows} == {True}
    code, out2, err2 = run(capsys, "rank", tmp_path / "in", "--model", active.path, "--store", project.store_dir,
                           "--threads", "1")
    assert code == 0, err2
    assert rows == [json.loads(line) for line in out2.splitlines()]  # the same model, the same calibration
    code, out3, _ = run(capsys, "rank", tmp_path / "in", "--model", active.path, "--threads", "1")
    assert {json.loads(line)["calibrated"] for line in out3.splitlines()} == {False}  # without the store


def test_project_errors_are_one_line(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    code, _, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "o", "--project", tmp_path / "nope",
                       "--model", "micro", "--threads", "1")
    assert code == 2 and "no such folder" in one_error_line(err)
    assert not (tmp_path / "nope").exists()

    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "rank", tmp_path / "in", "--project", tmp_path / "file", "--threads", "1")
    assert code == 2 and "is a file" in one_error_line(err)

    code, _, err = run(capsys, "finetune", "--project", tmp_path / "empty", "--model", "micro", "--threads", "1")
    assert code == 2 and "no corrected images" in one_error_line(err)
    assert not (tmp_path / "empty").exists()

    code, _, err = run(capsys, "finetune", "--model", "micro", "-o", tmp_path / "m.safetensors", "--threads", "1")
    assert code == 2 and "--data DIR is required" in one_error_line(err)
    data = tmp_path / "p"
    project_with_store(data, 2)
    code, _, err = run(capsys, "finetune", "--data", data / "store", "--model", "micro", "--threads", "1")
    assert code == 2 and "-o OUT is required" in one_error_line(err)
