"""The GPU check (scripts/gpu_check.sh + .py) and its data pack (scripts/pack_data.py), dry-run on CPU.

The pack is made from a generated stand-in of the three public pools (no
third-party images), so this runs without SAMSP_DATA. The dry run is the same
script the lent GPU machine runs, with ``--device cpu --tiny``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import pack_data  # noqa: E402

from napari_samsp.sample_data_gen import synthetic_nuclei, synthetic_ultrasound  # noqa: E402


def fake_pools(root: Path) -> Path:
    """dsb2018_nuclei (instance labels, 300 x 280, splits.json) and two binary pools (no splits.json)."""
    for name in pack_data.DATASETS:
        folder = root / name
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir(parents=True)
        stems = [f"{name[:3]}{i}" for i in range(5)]
        for i, stem in enumerate(stems):
            if name.startswith("dsb"):
                img, lab = synthetic_nuclei((300, 280), n=12, seed=i)
                Image.fromarray(img).save(folder / "images" / f"{stem}.png")
                Image.fromarray(lab.astype(np.uint16)).save(folder / "masks" / f"{stem}.png")
            else:
                img, mask = synthetic_ultrasound((120, 160), seed=i)
                Image.fromarray(img).save(folder / "images" / f"{stem}.png")
                Image.fromarray((mask > 0).astype(np.uint8) * 255).save(folder / "masks" / f"{stem}.png")
        if name.startswith("dsb"):
            (folder / "splits.json").write_text(json.dumps({"train": stems[:3], "val": stems[3:]}))
    return root


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    root = fake_pools(tmp_path_factory.mktemp("pools"))
    out = tmp_path_factory.mktemp("pack") / "pack.npz"
    counts = pack_data.pack(root, out, per_split=(2, 1), size=128)
    assert counts == {name: 3 for name in pack_data.DATASETS}
    return out


def test_pack_round_trip(pack, tmp_path):
    sys.path.insert(0, str(REPO / "training"))
    from gpu_train import read_pack

    with np.load(pack, allow_pickle=False) as z:  # no pickles in the pack
        images, masks, domains, split, stems = (z[k] for k in ("images", "masks", "domains", "split", "stems"))
    assert images.dtype == np.uint8 and images.shape == (9, 128, 128, 3) and masks.shape == (9, 128, 128)
    i = int(np.flatnonzero(stems == "dsb3")[0])
    assert domains[i] == "dsb2018_nuclei" and split[i] == "val"
    # 300 x 280 -> 128 x 119, zero-padded on the right; instance ids kept (nearest)
    assert not images[i, :, 119:].any() and images[i, :, :119].any() and np.unique(masks[i]).size > 3
    j = int(np.flatnonzero(domains == "polypgen_polyps")[0])
    assert set(np.unique(masks[j])) <= {0, 1}  # binary sets use 1
    train_ex, val_ex = read_pack(pack)  # the GPU training recipe reads the same pack
    assert len(train_ex) == 6 and len(val_ex) == 3
    dirs = pack_data.unpack(pack, tmp_path / "data")
    assert set(dirs) == set(pack_data.DATASETS)
    splits = json.loads((dirs["dsb2018_nuclei"] / "splits.json").read_text())
    assert splits == {"train": ["dsb0", "dsb2"], "val": ["dsb3"]}  # evenly spaced over the split
    back = np.asarray(Image.open(dirs["dsb2018_nuclei"] / "masks" / "dsb3.png"))
    np.testing.assert_array_equal(back, masks[i])


def test_gpu_check_dry_run_on_cpu(pack, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--threads", "1", "--pack", str(pack)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert report["all_ok"], {k: v.get("error") for k, v in steps.items() if not v["ok"]}
    assert len(steps) == 13
    assert steps["samsp segment: default model"]["modes"] in (["semantic"], ["instance"])
    assert steps["samsp segment: official model (everything)"]["modes"] == ["everything"]
    assert steps["official model (random, official format)"]["mode"] == "everything"
    assert steps["CPU vs device masks: default model"]["agree"] is True
    assert steps["official model vs upstream SamPredictor"]["embed_upstream_fp32"]["n"] == 2
    ev = steps["everything-mode vs upstream SamAutomaticMaskGenerator"]["loosened"]
    assert ev["ours_grid"] > 0 and ev["upstream_grid"] > 0 and ev["masks"]["matched"] == min(ev["masks"]["ours"], ev["masks"]["upstream"])
    for name in ("fine-tune timing: default model", "fine-tune timing: official model"):
        assert steps[name]["fp32"]["steps"] == 3 and steps[name]["fp32"]["s_per_step_median"] > 0
    assert steps["samsp finetune: default model"]["exit_code"] == 0
    md = (out / "gpu_check.md").read_text()
    assert "| samsp finetune: official model | yes |" in md
    assert (out / "gpu_check.log").is_file()
