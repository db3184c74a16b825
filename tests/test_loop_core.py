"""Qt-free pieces behind issue 11's fixes: transparent pixels, shared ranking options, the plot's x-range."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samsp.autoseg import AutoSegResult, mask_transparent, transparent_mask
from napari_samsp.work_queue import rank_options


def test_transparent_pixels_become_background_and_ids_are_renumbered():
    labels = np.zeros((4, 6), np.uint16)
    labels[:, 0] = 1
    labels[:, 4] = 2  # entirely in the transparent part
    labels[:, 2:4] = 3  # half of it transparent
    res = AutoSegResult(labels, np.full((4, 6), 0.9, np.float32), {1: 0.8, 2: 0.7, 3: 0.6}, [np.ones((4, 6), np.float32)])
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, 3:, 3] = 0
    out = mask_transparent(res, rgba)
    assert not out.labels[:, 3:].any() and out.labels[:, :3].any()
    assert sorted(np.unique(out.labels[out.labels > 0]).tolist()) == [1, 2]  # 1 and 3 kept, renumbered 1..N
    assert out.scores == {1: 0.8, 2: 0.6}
    assert (out.probability[:, 3:] == 0).all() and (out.pass_probabilities[0][:, 3:] == 0).all()
    # No alpha channel, or no fully transparent pixel: unchanged.
    assert transparent_mask(rgba[..., :3]) is None
    assert mask_transparent(res, np.full((4, 6, 4), 255, np.uint8)) is res


def test_rank_options_follow_the_card_unless_a_mode_is_given():
    card = {"mode": "instance", "num_passes": 3}
    assert rank_options(card) == {"mode": "instance", "num_passes": 3, "store": None}
    assert rank_options(card, "semantic", "S")["mode"] == "semantic"
    assert rank_options(None) == {"mode": "semantic", "num_passes": 2, "store": None}
    with pytest.raises(ValueError):
        rank_options(card, "panoptic")


def test_cli_segment_leaves_transparent_pixels_unlabelled(tmp_path):
    from PIL import Image

    from napari_samsp import cli
    from napari_samsp.sample_data_gen import synthetic_nuclei

    gray, _ = synthetic_nuclei((128, 128), n=12, seed=12)
    rgba = np.zeros((128, 128, 4), np.uint8)
    rgba[..., :3] = (gray // 256).astype(np.uint8)[..., None]
    rgba[..., 3] = 255
    rgba[:, 64:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    assert cli.main(["segment", str(tmp_path / "half.png"), "-o", str(tmp_path / "out")]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "half.png"))
    assert labels[:, :64].any() and not labels[:, 64:].any()
