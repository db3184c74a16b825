"""The GPU recipe on CPU with a tiny budget: pack -> time-boxed training -> evaluation -> fp16 export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

import gpu_train  # noqa: E402
from test_finetune import disc_image  # noqa: E402

from napari_samsp.errors import DataLayoutError  # noqa: E402
from napari_samsp.models import build_model  # noqa: E402
from napari_samsp.models.checkpoints import load_model, save_model  # noqa: E402


def _pack(path: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    images, masks, domains, split = [], [], [], []
    for i in range(n):
        img, lab = disc_image(rng, 64, 64)
        images.append(np.repeat(img[..., None], 3, -1))
        masks.append(lab if i % 2 else (lab > 0).astype(np.uint16))  # an instance and a binary domain
        domains.append("discs" if i % 2 else "blobs")
        split.append("val" if i >= n - 4 else "train")
    return gpu_train.write_pack(path, np.stack(images), np.stack(masks), domains, split)


@pytest.fixture
def parent(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_model(build_model("micro"), tmp_path / "parent.safetensors", {"mode": "instance"})


def test_pack_round_trip_and_bad_packs(tmp_path):
    pack = _pack(tmp_path / "p.npz")
    tr, va = gpu_train.read_pack(pack)
    assert len(tr) == 4 and len(va) == 4
    assert tr[0].image.dtype == np.uint8 and tr[0].image.shape == (64, 64, 3) and tr[0].labels.shape == (64, 64)
    assert {ex.domain for ex in tr} == {"discs", "blobs"}
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataLayoutError):
        gpu_train.read_pack(tmp_path / "bad.npz")
    with pytest.raises(DataLayoutError):
        gpu_train.read_pack(tmp_path / "missing.npz")


def test_recipe_trains_within_budget_evaluates_and_exports_fp16(tmp_path, parent):
    pack = _pack(tmp_path / "p.npz")
    out = tmp_path / "OUT"
    rc = gpu_train.main(["--pack", str(pack), "--init", str(parent), "--out", str(out), "--budget-s", "4",
                         "--batch-size", "2", "--eval-objects", "2", "--threads", "1", "--device", "cpu"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] >= 1
    # stops after the step that crosses the budget (a micro step is well under a second)
    assert summary["train_seconds"] < 4 + 3
    assert summary["files"] == ["model.safetensors"] and summary["file_mib"][0] <= 16
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if f.get_tensor(k).is_floating_point())
    loaded = load_model(out / "model.safetensors", device="cpu")
    assert loaded.card["parent"] == str(parent) and loaded.card["steps"] == summary["steps"]
    before = load_model(parent, device="cpu").model.state_dict()
    after = loaded.model.state_dict()
    assert any(not torch.allclose(before[k].float(), after[k].float(), atol=1e-3) for k in before)
    ev = json.loads((out / "eval.json").read_text())
    for who in ("trained", "parent"):
        assert set(ev[who]["prompt_free"]) >= {"dice", "dice/discs", "dice/blobs"}
        for dom in ("discs", "blobs"):
            clicks, box = ev[who][dom]["clicks"], ev[who][dom]["box"]
            assert clicks["n"] == 2 and 1 <= clicks["noc@85"] <= 20 and 0 <= clicks["iou@5"] <= 1
            assert box["n"] >= 2 and 0 <= box["box_outside"] <= 1
    assert len((out / "history.jsonl").read_text().splitlines()) == summary["steps"]


def test_export_shards_when_a_file_would_be_too_big(tmp_path):
    torch.manual_seed(0)
    model = build_model("micro")
    files = gpu_train.save_fp16(model, tmp_path, {"mode": "semantic"}, max_file_mib=0.6)
    assert len(files) > 1 and all(p.stat().st_size <= 0.6 * 2**20 for p in files)
    joined = gpu_train.join_shards(tmp_path, tmp_path / "joined.safetensors")
    back = load_model(joined, device="cpu").model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.allclose(back[k].float(), v.half().float()), k
