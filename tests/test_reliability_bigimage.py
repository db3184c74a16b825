"""Issue 13, huge images: tile by tile into a label TIFF on disk (napari_samsp.bigimage) and the CLI path."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from test_cli import run

from napari_samsp import bigimage
from napari_samsp.autoseg import AutoSegResult, segment_tiled
from napari_samsp.models import build_model
from napari_samsp.predictor import EmbeddingCache, Predictor


def _discs(h: int, w: int, r: int = 9, step: int = 37, seed: int = 0) -> np.ndarray:
    """Instance labels: discs of radius ``r`` on a jittered grid (each smaller than the tiles' overlap / 2)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((h, w), np.int32)
    n = 0
    for cy in range(r + 2, h - r - 2, step):
        for cx in range(r + 2, w - r - 2, step):
            y, x = cy + rng.integers(-4, 5), cx + rng.integers(-4, 5)
            n += 1
            lab[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = n
    return lab


@pytest.fixture
def predictor():
    torch.manual_seed(0)
    return Predictor(build_model("micro").eval(), "micro-test", EmbeddingCache(None))


def test_semantic_to_disk_equals_the_in_memory_tiling(tmp_path, predictor):
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(1000, 300, (300, 410)) + 2000 * (_discs(300, 410) > 0), 1, 3999).astype(np.uint16)
    image[:4], image[-4:] = 0, 4000  # plateaus at both ends: the 0.5/99.5 percentiles are exact (0, 4000)
    expected = segment_tiled(predictor, image, tile_size=128, overlap=32, mode="semantic", threshold=0.5, min_size=0)
    out = tmp_path / "labels.tif"
    done = []
    bigimage.segment_to_tiff(predictor, image, out, "semantic", progress=lambda d, t: done.append((d, t)),
                             tile_size=128, overlap=32, threshold=0.5, min_size=0)
    got = tifffile.imread(out)
    assert got.dtype == np.uint16 and got.shape == image.shape
    assert np.array_equal(got, expected.labels)
    assert done == [(i + 1, done[-1][1]) for i in range(done[-1][1])] and done[-1][1] > 6  # one call per tile
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]  # atomic: no temporary file left


def test_instance_stitching_keeps_every_object_once(tmp_path, predictor):
    truth = _discs(400, 520)

    def oracle(pred, rgb, mode, **kwargs):  # a perfect tile segmenter: the true labels of the tile
        (y0, x0), = [k for k, v in tiles_seen.items() if v is None][:1]
        tiles_seen[(y0, x0)] = True
        from skimage.segmentation import relabel_sequential

        crop = truth[y0 : y0 + rgb.shape[0], x0 : x0 + rgb.shape[1]]
        return AutoSegResult(relabel_sequential(crop)[0].astype(np.uint16), np.zeros(crop.shape, np.float32), {}, [])

    from napari_samsp.tiling import plan_tiles

    tiles_seen = {(t[0], t[2]): None for t in plan_tiles(truth.shape, 128, 40)}  # row-major, like the stitcher
    out = tmp_path / "inst.tif"
    n = bigimage.segment_to_tiff(predictor, np.zeros(truth.shape, np.uint8), out, "instance", tile_size=128,
                                 overlap=40, segment_fn=oracle)
    got = tifffile.imread(out)
    assert got.dtype == np.uint32 and n == int(truth.max())
    # one label per true object, exactly its pixels
    pairs = {(int(a), int(b)) for a, b in zip(truth.ravel(), got.ravel())}
    assert len({a for a, b in pairs if a}) == len({b for a, b in pairs if b}) == n
    assert all((a == 0) == (b == 0) for a, b in pairs) and len(pairs) == n + 1


def test_lazy_tiff_is_read_band_by_band(tmp_path, predictor):
    image = (np.random.default_rng(2).random((260, 300)) * 4000).astype(np.float64)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    source = bigimage.open_lazy(path)
    assert not isinstance(source, np.ndarray) and source.shape == image.shape
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    bigimage.segment_to_tiff(predictor, source, a, "semantic", tile_size=128, overlap=32)
    bigimage.segment_to_tiff(predictor, image, b, "semantic", tile_size=128, overlap=32)
    assert np.array_equal(tifffile.imread(a), tifffile.imread(b))


def test_contiguous_tiff_is_read_by_rows(tmp_path):
    image = (np.random.default_rng(4).random((200, 150, 3)) * 60000).astype(">u2")  # big-endian, RGB
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image, photometric="rgb")  # uncompressed: one contiguous block
    source = bigimage.open_lazy(path)
    assert type(source).__name__ == "_ContiguousTiff" and source.shape == image.shape
    assert np.array_equal(source[37:121], image[37:121])
    assert np.array_equal(source[5:190:7, ::3], image[5:190:7, ::3])
    assert np.array_equal(source[190:], image[190:]) and source[250:].shape == (0, 150, 3)


def test_cli_streams_huge_images_with_a_progress_line_per_tile(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bigimage, "HUGE_PIXELS", 100 * 100)  # "huge" from 10k pixels, so the test stays small
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "slide.tif", (np.random.default_rng(3).random((300, 420)) * 255).astype(np.uint8))
    tifffile.imwrite(inputs / "nan.tif", np.full((20, 20), np.nan, np.float32))
    out = tmp_path / "out"
    code, _, err = run(capsys, "segment", inputs, "-o", out, "--model", "micro", "--threads", "1")
    assert code == 2 and "NaN" in err and not out.exists()  # every input is checked before writing anything
    (inputs / "nan.tif").unlink()
    code, stdout, err = run(capsys, "segment", inputs, "-o", out, "--model", "micro", "--threads", "1")
    assert code == 0, err
    tile_lines = [line for line in stdout.splitlines() if "slide.tif: tile" in line]
    assert len(tile_lines) > 1 and tile_lines[-1].endswith(f"tile {len(tile_lines)}/{len(tile_lines)}")
    labels = tifffile.imread(out / "slide.tif")
    assert labels.shape == (300, 420) and sorted(p.name for p in out.iterdir()) == ["slide.tif"]
