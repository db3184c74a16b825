"""The ``samsp`` command: models, segment, evaluate, finetune, and its one-line errors.

Commands run in-process through ``napari_samsp.cli.main`` (output captured with
capsys); one check runs the installed console script. ``--threads 1`` everywhere:
without it the CLI sets torch's thread count for the whole test process.
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_finetune import disc_image, write_disc_layout

from napari_samsp.cli import main
from napari_samsp.metrics import dice as dice_metric
from napari_samsp.models import build_model
from napari_samsp.models.checkpoints import CARD_KEY, make_card, save_model

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = ("micro", "tiny", "samunet_micro", "samunet_tiny", "vit_b", "vit_l", "vit_h")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_inputs(folder: Path) -> dict[str, tuple[int, int]]:
    """Two small PNGs (gray 70x90 and RGB 100x60): {stem: (H, W)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    gray, _ = disc_image(rng, 70, 90)
    rgb, _ = disc_image(rng, 100, 60)
    Image.fromarray(gray).save(folder / "a_gray.png")
    Image.fromarray(np.stack([rgb, rgb // 2, 255 - rgb], -1)).save(folder / "b_rgb.png")
    return {"a_gray": (70, 90), "b_rgb": (100, 60)}


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------- models


def test_models_lists_the_built_in_names(capsys):
    code, out, err = run(capsys, "models")
    assert code == 0 and err == ""
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"default", *BUILT_IN} <= names


def test_console_script_runs():
    script = shutil.which("samsp") or str(Path(sys.executable).with_name("samsp"))
    assert Path(script).is_file(), "the samsp console script is not installed"
    proc = subprocess.run([script, "models"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert proc.returncode == 0, proc.stderr
    for name in BUILT_IN:
        assert name in proc.stdout


# ----------------------------------------------------------------------------- segment


@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_segment_writes_uint16_labels_of_the_input_size(tmp_path, capsys, mode):
    sizes = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "segment", tmp_path / "in", "-o", out, "--model", "micro",
                            "--mode", mode, "--threads", "1", "--device", "cpu")
    assert code == 0, err
    assert files_in(out) == sorted(f"{stem}.png" for stem in sizes)
    for stem, hw in sizes.items():
        with Image.open(out / f"{stem}.png") as im:
            assert im.mode in ("I;16", "I;16B", "I;16L"), im.mode  # 16-bit on disk
            labels = np.asarray(im)
        assert labels.dtype == np.uint16 and labels.shape == hw
        assert f"mode {mode}" in stdout
    # a random model must be impossible to miss
    assert "RANDOMLY INITIALISED" in err and err.count("samsp: warning:") >= 3


def test_segment_accepts_single_files(tmp_path, capsys):
    sizes = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", tmp_path / "in" / "b_rgb.png", "-o", out, "--model", "micro", "--threads", "1")
    assert code == 0, err
    assert files_in(out) == ["b_rgb.png"]
    assert np.asarray(Image.open(out / "b_rgb.png")).shape == sizes["b_rgb"]


def _random_bytes(path: Path, n: int = 4096) -> Path:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def _missing_weights(tmp: Path, inputs: Path) -> list:
    return ["--model", tmp / "nope.safetensors"]


def _corrupt_safetensors(tmp: Path, inputs: Path) -> list:
    return ["--model", _random_bytes(tmp / "bad.safetensors")]


def _corrupt_pth(tmp: Path, inputs: Path) -> list:
    return ["--model", _random_bytes(tmp / "bad.pth")]


def _empty_weights(tmp: Path, inputs: Path) -> list:
    return ["--model", _random_bytes(tmp / "empty.pth", 0)]


def _foreign_pth(tmp: Path, inputs: Path) -> list:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    torch.save(net.state_dict(), tmp / "convnet.pth")
    return ["--model", tmp / "convnet.pth"]


def _mislabelled_safetensors(tmp: Path, inputs: Path) -> list:
    """Weights of the ``tiny`` architecture under a card that says ``micro``."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in build_model("tiny").state_dict().items()}
    card = make_card(build_model("micro").config, {})
    path = tmp / "tiny_as_micro.safetensors"
    save_file(tensors, path, metadata={"format": "pt", CARD_KEY: json.dumps(card)})
    return ["--model", path]


def _unknown_name(tmp: Path, inputs: Path) -> list:
    return ["--model", "vit_tiny_nonexistent"]


def _tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile warns about zero-size arrays
        tifffile.imwrite(path, array)


def _zero_size_tiff(tmp: Path, inputs: Path) -> list:
    _tiff(inputs / "z_empty.tif", np.zeros((0, 8), np.uint8))
    return ["--model", "micro"]


def _zero_byte_png(tmp: Path, inputs: Path) -> list:
    (inputs / "z_zero.png").write_bytes(b"")
    return ["--model", "micro"]


def _nan_tiff(tmp: Path, inputs: Path) -> list:
    img = np.ones((40, 50), np.float32)
    img[3, 4] = np.nan
    _tiff(inputs / "z_nan.tif", img)
    return ["--model", "micro"]


def _five_d_tiff(tmp: Path, inputs: Path) -> list:
    _tiff(inputs / "z_5d.tif", np.zeros((2, 2, 2, 16, 16), np.uint8))
    return ["--model", "micro"]


# case -> (prepare(tmp_path, input folder) -> extra argv, words the message must hold)
BAD_INPUTS = {
    "missing weights": (_missing_weights, "not found"),
    "corrupt safetensors": (_corrupt_safetensors, "not a valid safetensors"),
    "corrupt pth": (_corrupt_pth, "cannot read"),
    "empty weights file": (_empty_weights, "empty"),
    "weights of another architecture (pth)": (_foreign_pth, "not a SAM checkpoint"),
    "weights of another architecture (safetensors)": (_mislabelled_safetensors, "do not fit model 'micro'"),
    "unknown model name": (_unknown_name, "unknown model"),
    "zero-size image": (_zero_size_tiff, "no pixel data"),
    "zero-byte png": (_zero_byte_png, "cannot read image"),
    "NaN float tiff": (_nan_tiff, "NaN"),
    "5-D tiff": (_five_d_tiff, "5 dimensions"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    prepare, words = BAD_INPUTS[case]
    inputs = tmp_path / "in"
    write_inputs(inputs)  # good images sort first: they must not be written either
    extra = prepare(tmp_path, inputs)
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", inputs, "-o", out, "--threads", "1", *extra)
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("samsp: error:"), err
    assert words in lines[0], lines[0]
    assert files_in(out) == []


def test_folder_without_images_fails_with_one_line(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", tmp_path / "nothing", "-o", out, "--model", "micro", "--threads", "1")
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("samsp: error:") and "no images" in lines[0], err
    assert files_in(out) == []


# ----------------------------------------------------------------------------- evaluate


def _write_masks(folder: Path, masks: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, m in masks.items():
        Image.fromarray(m).save(folder / f"{stem}.png")
    return folder


def test_evaluate_prints_json_metrics(tmp_path, capsys):
    gt_a = np.zeros((40, 50), np.uint8)
    gt_a[5:15, 5:15] = 255
    gt_a[25:35, 30:45] = 255  # two objects
    pred_a = np.zeros_like(gt_a)
    pred_a[5:15, 5:15] = 255  # only the first one
    gt_b = np.zeros((30, 30), np.uint16)
    gt_b[2:10, 2:10] = 1
    gt_b[15:25, 15:25] = 2
    _write_masks(tmp_path / "gt" / "masks", {"a": gt_a, "b": gt_b})
    (tmp_path / "gt" / "images").mkdir()
    _write_masks(tmp_path / "pred", {"a": pred_a, "b": gt_b})

    code, out, err = run(capsys, "evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt")
    assert code == 0, err
    report = json.loads(out)
    expected_a = 2 * 100 / (100 + 250)
    assert report["n"] == 2
    assert report["dice"] == pytest.approx((expected_a + 1.0) / 2)
    assert report["dice"] == pytest.approx((dice_metric(pred_a, gt_a) + dice_metric(gt_b, gt_b)) / 2)
    assert report["iou"] == pytest.approx((100 / 250 + 1.0) / 2)
    assert "instance_f1" not in report

    code, out, err = run(capsys, "evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--instances", "--compact")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    report = json.loads(out)
    # a: one of two objects found (F1 2/3); b: both (F1 1)
    assert report["instance_f1"] == pytest.approx((2 / 3 + 1.0) / 2)

    code, _, err = run(capsys, "evaluate", "--pred", tmp_path / "nowhere", "--gt", tmp_path / "gt")
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("samsp: error:")


# ----------------------------------------------------------------------------- finetune


def test_finetune_writes_a_model_that_segment_accepts(tmp_path, capsys):
    data = write_disc_layout(tmp_path / "data", n=5)
    model_path = tmp_path / "out.safetensors"
    code, out, err = run(capsys, "finetune", "--data", data, "--model", "micro", "-o", model_path,
                         "--steps", "3", "--threads", "1", "--device", "cpu")
    assert code == 0, err
    assert model_path.is_file() and model_path.with_suffix(".json").is_file()
    assert "final validation Dice" in out
    final = float(out.split("final validation Dice:")[1].split()[0])
    assert 0.0 <= final <= 1.0
    assert "step 3/3" in out

    sizes = write_inputs(tmp_path / "in")
    code, _, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "seg", "--model", model_path, "--threads", "1")
    assert code == 0, err
    assert "RANDOMLY INITIALISED" not in err
    for stem, hw in sizes.items():
        assert np.asarray(Image.open(tmp_path / "seg" / f"{stem}.png")).shape == hw


def test_improve_runs_a_round_and_always_writes_the_model(tmp_path, capsys):
    data = write_disc_layout(tmp_path / "data", n=6)
    write_inputs(tmp_path / "unlabeled")
    out_path = tmp_path / "improved.safetensors"
    code, out, err = run(capsys, "improve", "--data", data, "--unlabeled", tmp_path / "unlabeled", "--model", "micro",
                         "-o", out_path, "--rounds", "1", "--steps", "2", "--threads", "1", "--device", "cpu")
    assert code == 0, err
    assert out_path.is_file()
    assert "validation Dice" in out and "->" in out


def test_improve_without_unlabeled_images_fails_with_one_line(tmp_path, capsys):
    data = write_disc_layout(tmp_path / "data", n=4)
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "improve", "--data", data, "--unlabeled", tmp_path / "empty", "--model", "micro",
                       "-o", tmp_path / "x.safetensors", "--threads", "1")
    assert code != 0
    lines = [line for line in err.splitlines() if not line.startswith("samsp: warning:")]
    assert len(lines) == 1 and lines[0].startswith("samsp: error:"), err
    assert not (tmp_path / "x.safetensors").exists()


def test_finetune_bad_data_fails_with_one_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code, _, err = run(capsys, "finetune", "--data", tmp_path / "data", "--model", "micro",
                       "-o", tmp_path / "m.safetensors", "--steps", "2", "--threads", "1")
    assert code != 0
    lines = [line for line in err.splitlines() if not line.startswith("samsp: warning:")]
    assert len(lines) == 1 and lines[0].startswith("samsp: error:") and "images/" in lines[0], err
    assert not (tmp_path / "m.safetensors").exists()


# ----------------------------------------------------------------------------- real data


@pytest.mark.data
def test_segment_and_evaluate_real_images(tmp_path, capsys, data_root):
    """Two images of each public dataset through the default model, then scored against their masks."""
    inputs, gt = tmp_path / "in", tmp_path / "gt"
    (gt / "masks").mkdir(parents=True)
    inputs.mkdir()
    sizes = {}
    for name in ("dsb2018_nuclei", "polypgen_polyps", "hc18_fetal_head_us"):
        images = sorted(p for p in (data_root / name / "images").iterdir() if (data_root / name / "masks" / f"{p.stem}.png").is_file())
        for image in images[:2]:
            shutil.copy(image, inputs / image.name)
            shutil.copy(data_root / name / "masks" / f"{image.stem}.png", gt / "masks" / f"{image.stem}.png")
            with Image.open(image) as im:
                sizes[image.stem] = (im.height, im.width)
    assert len(sizes) == 6

    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", inputs, "-o", out, "--threads", "1", "--device", "cpu")
    assert code == 0, err
    for stem, hw in sizes.items():
        with Image.open(out / f"{stem}.png") as im:
            labels = np.asarray(im)
        assert labels.dtype == np.uint16 and labels.shape == hw

    code, stdout, err = run(capsys, "evaluate", "--pred", out, "--gt", gt, "--instances")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["n"] == 6 and report["missing"] == []
    for key in ("dice", "iou", "instance_f1"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0, (key, report[key])


def test_segment_follows_the_cards_refine_instances(tmp_path, capsys, monkeypatch):
    """A card that turns per-object re-decoding off is obeyed by `samsp segment`."""
    import napari_samsp.autoseg as autoseg

    write_inputs(tmp_path / "in")
    torch.manual_seed(0)
    weights = tmp_path / "m.safetensors"
    save_model(build_model("micro"), weights, {"num_passes": 1, "refine_instances": False, "flip_views": 2})
    seen = []
    real = autoseg.segment

    def spy(*args, **kwargs):
        seen.append((kwargs.get("num_passes"), kwargs.get("refine_instances"), kwargs.get("flip_views")))
        return real(*args, **kwargs)

    monkeypatch.setattr(autoseg, "segment", spy)
    code, _, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "out", "--model", weights,
                       "--mode", "instance", "--threads", "1")
    assert code == 0, err
    assert seen and all(s == (1, False, 2) for s in seen)
    # --flip-views overrides the card's
    seen.clear()
    code, _, err = run(capsys, "segment", tmp_path / "in", "-o", tmp_path / "out2", "--model", weights,
                       "--mode", "instance", "--threads", "1", "--flip-views", "1")
    assert code == 0, err
    assert seen and all(s == (1, False, 1) for s in seen)


# ----------------------------------------------------------------------------- rank


def _store_of_corrections(root: Path, n: int = 5):
    """An annotation store (what the plugin writes) with ``n`` corrected disc images."""
    from napari_samsp.store import AnnotationStore

    store = AnnotationStore(root)
    rng = np.random.default_rng(7)
    for i in range(n):
        img, lab = disc_image(rng, 64, 72)
        store.add(img, lab, source=f"c{i}.png")
    return store


def test_rank_prints_rank_paths_order_calibrated_by_the_store(tmp_path, capsys, monkeypatch):
    from napari_samsp.models.checkpoints import load_model
    from napari_samsp.predictor import Predictor
    from napari_samsp.reward import rank_paths
    from napari_samsp.work_queue import rank_options

    monkeypatch.setenv("SAMSP_CACHE", "off")
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(disc_image(rng, 64 + 8 * i, 80)[0]).save(folder / f"u{i}.png")
    _store_of_corrections(tmp_path / "store")
    code, out, err = run(capsys, "rank", folder, "--store", tmp_path / "store", "--mode", "instance",
                         "--model", "micro", "--threads", "1")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    # the library's ranking with the options the plugin uses (same model, mode and store)
    loaded = load_model("micro")
    paths = sorted(folder.glob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = list(rank_paths(Predictor(loaded.model, loaded.model_id), paths,
                                   **rank_options(loaded.model_card, "instance", tmp_path / "store")))
    assert [r["image"] for r in rows] == [r["image"] for r in expected]
    assert [Path(r["image"]).name for r in rows] != [p.name for p in paths]  # the order is not file order
    np.testing.assert_allclose([r["expected_dice"] for r in rows], [r["expected_dice"] for r in expected], atol=1e-6)
    assert [r["rank"] for r in rows] == [0, 1, 2, 3]
    assert all(r["calibrated"] for r in rows)  # 5 corrected masks in the store: calibrated
    # --mode is used: semantic mode scores the images differently
    code, out_sem, err = run(capsys, "rank", folder, "--store", tmp_path / "store", "--mode", "semantic",
                             "--model", "micro", "--threads", "1")
    assert code == 0, err
    sem = {r["image"]: r["expected_dice"] for r in map(json.loads, out_sem.splitlines())}
    assert any(abs(sem[r["image"]] - r["expected_dice"]) > 1e-6 for r in rows)


def test_rank_without_the_store_fails_with_one_line(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    code, out, err = run(capsys, "rank", tmp_path / "in", "--store", tmp_path / "nowhere", "--model", "micro",
                         "--threads", "1")
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if not line.startswith("samsp: warning:")]
    assert len(lines) == 1 and "annotation store not found" in lines[0], err
