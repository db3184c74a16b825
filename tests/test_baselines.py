"""The benchmark scripts' small parts: the U-Net baseline builds offline, trains and segments like our models."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

pytest.importorskip("segmentation_models_pytorch")


def _examples(n=4, size=64):
    from napari_samsp.finetune.data import Example

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        lab = np.zeros((size, size), np.int32)
        lab[10:30, 12:34] = 1
        lab[40:55, 40:60] = 2
        img[lab > 0] += 150
        out.append(Example(img, lab, "nuclei" if i % 2 else "polyps", f"s{i}"))
    return out


def test_unet_builds_offline(monkeypatch):
    from baselines import check

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = check(img_size=64)
    assert res["ok"] and res["output_shape"] == [1, 1, 64, 64]


def test_unet_trains_and_resumes(tmp_path):
    from baselines import build_unet, train_unet

    torch.manual_seed(0)
    model = build_unet()
    ck = tmp_path / "ck.pt"
    info = train_unet(model, _examples(), img_size=64, steps=2, batch_size=2, checkpoint_path=ck, checkpoint_every=1, log=lambda s: None)
    assert info["steps"] == 2 and np.isfinite(info["last_loss"]) and ck.exists()
    info = train_unet(model, _examples(), img_size=64, steps=3, batch_size=2, checkpoint_path=ck, log=lambda s: None)
    assert info["steps"] == 3


@pytest.mark.parametrize("shape", [(50, 70), (200, 90)])  # whole image, and tiled (> 2 * img_size)
def test_unet_segmenter_shapes(shape):
    from baselines import UNetSegmenter, build_unet

    seg = UNetSegmenter(build_unet(), img_size=64)
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    for mode in ("semantic", "instance"):
        lab = seg.segment(img, mode)
        assert lab.shape == shape and lab.dtype == np.uint16
    assert seg.supports_clicks is False


def test_evenly_spaced_and_noc_object():
    from common import evenly_spaced
    from evaluate_model import pick_noc_object

    assert evenly_spaced(list(range(10)), 3) == [0, 4, 9]
    assert evenly_spaced([1, 2], 5) == [1, 2]
    gt = np.zeros((20, 20), np.uint16)
    gt[0:2, 0:2] = 1  # 4 px
    gt[5:10, 5:10] = 2  # 25 px
    gt[12:20, 12:20] = 3  # 64 px
    assert pick_noc_object(gt, instance=True).sum() == 25
    assert pick_noc_object(gt, instance=False).sum() == 93
    assert pick_noc_object(np.zeros((4, 4)), instance=True) is None
