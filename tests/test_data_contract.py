"""The data contract has one implementation each (issue 12, point 4): mask reading, the contrast
stretch, the box convention and the atomic writer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_samsp import boxes, contrast, io, metrics
from napari_samsp.autoseg import _normalise_stack
from napari_samsp.bigimage import _stretch, _to_rgb
from napari_samsp.errors import InputImageError
from napari_samsp.interactive import StackNormaliser, mask_box
from napari_samsp.predictor import image_key
from napari_samsp.transforms import to_rgb_uint8

# --------------------------------------------------------------------------- read_mask


def test_one_read_mask_colour_masks_become_labels_everywhere(tmp_path):
    assert metrics.read_mask is io.read_mask
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[:2, :2] = (255, 0, 0)
    rgb[3:, 3:] = (0, 255, 0)
    rgb[0, 6] = (0, 255, 0)  # same colour, same label (not connected)
    for path in (io.write_png_atomic(tmp_path / "m.png", rgb), io.write_tiff_atomic(tmp_path / "m.tif", rgb)):
        lab = io.read_mask(path)
        assert lab.shape == (6, 7) and lab.dtype == np.uint16
        assert set(np.unique(lab)) == {0, 1, 2}
        assert lab[2, 2] == 0 and lab[0, 0] != lab[5, 5] and lab[0, 6] == lab[5, 5]
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(io.read_mask(io.write_png_atomic(tmp_path / "a.png", rgba)), lab)
    np.testing.assert_array_equal(io.colour_labels(rgb), lab)


def test_read_mask_binary_255_is_binary_and_bad_masks_get_one_line(tmp_path):
    m = np.zeros((5, 5), np.uint8)
    m[1:3, 1:3] = 255
    assert set(np.unique(io.read_mask(io.write_png_atomic(tmp_path / "b.png", m)))) == {0, 1}
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputImageError, match="cannot read mask"):
        metrics.read_mask(tmp_path / "bad.png")


# --------------------------------------------------------------------------- contrast


def _large_u16(seed: int = 0) -> np.ndarray:
    side = 2100  # 4.4 M pixels > SAMPLE_PIXELS: the percentiles come from the grid subsample
    assert side * side > contrast.SAMPLE_PIXELS
    return np.random.default_rng(seed).gamma(2.0, 3000.0, (side, side)).astype(np.uint16)


def test_plugin_and_cli_see_the_same_pixels_and_cache_key_for_a_large_image():
    img = _large_u16()
    plugin = StackNormaliser(img).plane()  # what the plugin embeds
    cli = _normalise_stack([img])[0]  # what `samsp segment` embeds (segment_stack)
    np.testing.assert_array_equal(plugin, cli)
    np.testing.assert_array_equal(to_rgb_uint8(img), to_rgb_uint8(plugin))  # Predictor.set_image on raw data
    np.testing.assert_array_equal(_to_rgb(img[:300, :400], _stretch(img)), to_rgb_uint8(plugin[:300, :400]))
    assert image_key(to_rgb_uint8(plugin)) == image_key(to_rgb_uint8(cli)) == image_key(to_rgb_uint8(img))


def test_large_image_stretch_is_the_grid_percentiles_and_small_uses_every_pixel():
    img = _large_u16(1)
    step = contrast.sample_step(img.size)
    assert step == 2
    lo, hi = contrast.stretch_limits(img)
    want = np.percentile(img[::step, ::step].astype(np.float32) * 0.5, contrast.PERCENTILES)
    np.testing.assert_allclose([lo, hi], want)
    small = img[:500, :600]
    lo, hi = contrast.stretch_limits(small)
    np.testing.assert_allclose([lo, hi], np.percentile(small.astype(np.float32) * 0.5, contrast.PERCENTILES))


def test_float_image_same_pixels_on_both_paths_and_nan_outside_the_sample_is_refused():
    img = np.random.default_rng(2).normal(0, 1, (300, 400)).astype(np.float32)
    np.testing.assert_array_equal(StackNormaliser(img).plane(), _normalise_stack([img])[0])
    big = np.zeros((2100, 2100), np.float32)
    big[1, 1] = np.nan  # not on the even-row grid
    with pytest.raises(InputImageError, match="NaN"):
        StackNormaliser(big)
    with pytest.raises(InputImageError, match="NaN"):
        to_rgb_uint8(big)


def test_stack_stretch_is_shared_and_rgba_ignores_alpha():
    stack = np.random.default_rng(3).integers(0, 4000, (3, 40, 50)).astype(np.uint16)
    norm = StackNormaliser(stack)
    cli = _normalise_stack(list(stack))
    for z in range(3):
        np.testing.assert_array_equal(norm.plane(z), cli[z])
    rgba = np.random.default_rng(4).integers(0, 4000, (30, 40, 4)).astype(np.uint16)
    rgba[..., 3] = 65535
    np.testing.assert_array_equal(StackNormaliser(rgba, rgb=True).plane()[..., :3], to_rgb_uint8(rgba))
    np.testing.assert_array_equal(to_rgb_uint8(rgba), to_rgb_uint8(rgba[..., :3]))


# --------------------------------------------------------------------------- boxes


def test_mask_to_box_is_sams_inclusive_box_and_round_trips():
    from segment_anything.utils.amg import batched_mask_to_box

    rng = np.random.default_rng(5)
    for _ in range(20):
        m = np.zeros((23, 31), bool)
        y0, x0 = rng.integers(0, 20), rng.integers(0, 28)
        m[y0 : y0 + rng.integers(1, 4), x0 : x0 + rng.integers(1, 4)] = True
        box = boxes.mask_to_box(m)
        upstream = batched_mask_to_box(torch.from_numpy(m)[None])[0].numpy()
        np.testing.assert_array_equal(box, upstream)
        r0, r1, c0, c1 = boxes.box_slices(box, m.shape)
        assert m[r0:r1, c0:c1].sum() == m.sum() and (r1 - r0, c1 - c0) == (box[3] - box[1] + 1, box[2] - box[0] + 1)
        np.testing.assert_array_equal(boxes.edges_to_box(boxes.box_edges(box)), box)
    one = np.zeros((4, 4), bool)
    one[2, 1] = True
    np.testing.assert_array_equal(boxes.mask_to_box(one), [1, 2, 1, 2])
    assert boxes.mask_to_box(np.zeros((4, 4), bool)) is None


def test_every_box_helper_uses_the_one_convention():
    from napari_samsp.finetune.prompts import _box
    from napari_samsp.local_prompts import _grown_box
    from napari_samsp.reward.candidates import mask_box as reward_box

    m = np.zeros((20, 30), bool)
    m[4:9, 10:17] = True
    want = np.array([10, 4, 16, 8], np.float32)
    np.testing.assert_array_equal(mask_box(m), want)
    np.testing.assert_array_equal(reward_box(m), want)
    np.testing.assert_array_equal(reward_box(np.zeros((20, 30), bool)), [0, 0, 29, 19])
    np.testing.assert_array_equal(_box(torch.from_numpy(m)).numpy(), [10, 4, 17, 9])  # continuous extent
    np.testing.assert_array_equal(mask_box(m, margin=50), [0, 0, 29, 19])
    assert _grown_box(want, m.shape, 0.0) == (4, 9, 10, 17)
    assert _grown_box(want, m.shape, 2.0) == (2, 11, 8, 19)


# --------------------------------------------------------------------------- atomic writer


def _temps(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ".tmp" in n)


def test_write_atomic_leaves_no_temp_files_and_never_a_partial_file(tmp_path):
    target = tmp_path / "x.bin"
    io.write_atomic(target, lambda tmp: tmp.write_bytes(b"old"))
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []

    def partial(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.write_atomic(target, partial)
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []

    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.write_atomic(tmp_path / "new.bin", interrupted)
    assert not (tmp_path / "new.bin").exists() and _temps(tmp_path) == []


def test_training_checkpoints_go_through_write_atomic(tmp_path, monkeypatch):
    from napari_samsp.finetune import loop

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "ckpt.pt"
    loop._save_checkpoint(path, model, opt, loop.TrainState(step=3), None)
    assert torch.load(path, weights_only=True)["state"]["step"] == 3 and _temps(tmp_path) == []
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        loop._save_checkpoint(path, model, opt, loop.TrainState(step=4), None)
    assert path.read_bytes() == before and _temps(tmp_path) == []
