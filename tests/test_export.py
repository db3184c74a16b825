"""Qt-free tests: label export (TIFF, PNG, COCO), the npe2 reader/writer functions, sample data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_samsp.errors import InputImageError
from napari_samsp.export import (
    coco_to_labels,
    export_labels,
    labels_to_coco,
    rle_decode,
    rle_encode,
    write_coco,
    write_labels_png,
    write_labels_tiff,
)
from napari_samsp.io import read_image, read_mask, write_png_atomic
from napari_samsp.sample_data_gen import synthetic_nuclei, synthetic_nuclei_stack, synthetic_ultrasound


def _labels() -> np.ndarray:
    lab = np.zeros((40, 50), np.uint16)
    lab[5:15, 5:20] = 1  # rectangle
    yy, xx = np.mgrid[:40, :50]
    lab[(yy - 28) ** 2 + (xx - 30) ** 2 < 64] = 2  # disc
    lab[20:36, 2:14] = 3
    lab[25:30, 6:10] = 0  # object 3 has a hole
    lab[0:3, 45:50] = 4
    lab[37:40, 45:50] = 4  # object 4 has two parts
    return lab


def test_rle_round_trip_column_major():
    mask = np.zeros((4, 3), bool)
    mask[0, 0] = mask[1, 0] = mask[3, 2] = True
    rle = rle_encode(mask)
    assert rle["size"] == [4, 3]
    assert rle["counts"][0] == 0  # starts with foreground: a zero-length background run
    assert sum(rle["counts"]) == 12
    np.testing.assert_array_equal(rle_decode(rle), mask)
    empty = rle_encode(np.zeros((2, 2), bool))
    assert empty["counts"] == [4]


def test_coco_round_trip_polygons_and_rle():
    lab = _labels()
    coco = labels_to_coco(lab, "cells")
    assert [c["name"] for c in coco["categories"]] == ["object"]
    assert coco["images"] == [{"id": 1, "file_name": "cells.png", "height": 40, "width": 50}]
    anns = {a["attributes"]["label_id"]: a for a in coco["annotations"]}
    assert set(anns) == {1, 2, 3, 4}
    assert isinstance(anns[1]["segmentation"], list) and isinstance(anns[2]["segmentation"], list)
    assert isinstance(anns[3]["segmentation"], dict)  # hole -> RLE
    assert isinstance(anns[4]["segmentation"], dict)  # two parts -> RLE
    assert anns[1]["bbox"] == [5, 5, 15, 10] and anns[1]["area"] == 150
    back = coco_to_labels(coco)
    for lid in (3, 4):  # RLE is exact
        np.testing.assert_array_equal(back == lid, lab == lid)
    for lid in (1, 2):  # polygons are close
        a, b = back == lid, lab == lid
        assert (a & b).sum() / (a | b).sum() > 0.85
    exact = coco_to_labels(labels_to_coco(lab, "cells", segmentation="rle"))
    np.testing.assert_array_equal(exact, lab)


def test_coco_semantic_and_stack(tmp_path):
    lab = _labels()
    coco = labels_to_coco(lab, "x", semantic=True, category_names={1: "tumour"})
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
    assert coco["categories"][0]["name"] == "tumour"
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3, 4}
    stack = np.stack([lab, np.zeros_like(lab), lab])
    path = write_coco(tmp_path / "stack.json", stack)[0]
    data = json.loads(path.read_text())
    assert [im["file_name"] for im in data["images"]] == ["stack_z0000.png", "stack_z0001.png", "stack_z0002.png"]
    assert {a["attributes"]["slice"] for a in data["annotations"]} == {0, 2}
    np.testing.assert_array_equal(coco_to_labels(data, image_id=2), np.zeros_like(lab))


def test_tiff_and_png_writers(tmp_path):
    lab = _labels().astype(np.int64)
    (tif,) = write_labels_tiff(tmp_path / "a.tif", lab)
    back = read_image(tif)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, lab)
    big = lab.astype(np.uint32) * 70000
    np.testing.assert_array_equal(read_image(write_labels_tiff(tmp_path / "big.tif", big)[0]), big)
    (png,) = write_labels_png(tmp_path / "a.png", lab)
    np.testing.assert_array_equal(read_mask(png), lab)
    pngs = write_labels_png(tmp_path / "s.png", np.stack([lab, lab]))
    assert [p.name for p in pngs] == ["s_z0000.png", "s_z0001.png"]
    with pytest.raises(InputImageError, match="16-bit PNG"):
        write_labels_png(tmp_path / "big.png", big)
    with pytest.raises(InputImageError, match="use one of"):
        export_labels(tmp_path / "a.bmp", lab)
    with pytest.raises(InputImageError, match="2D or 3D"):
        export_labels(tmp_path / "a.tif", np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(InputImageError, match="negative"):
        export_labels(tmp_path / "a.tif", -np.ones((3, 3), np.int32))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_npe2_writer_and_reader_functions(tmp_path):
    from napari_samsp._reader import get_reader
    from napari_samsp._writer import write_labels_coco, write_labels_png16, write_labels_tif

    lab = _labels()
    assert write_labels_tif(str(tmp_path / "l.tif"), lab, {}) == [str(tmp_path / "l.tif")]
    assert write_labels_png16(str(tmp_path / "l.png"), lab, {})
    (coco,) = write_labels_coco(str(tmp_path / "l.json"), lab, {"name": "layer"})
    assert json.loads(open(coco).read())["images"][0]["file_name"] == "layer.png"

    # A data-layout folder of same-sized images -> image stack + labels stack.
    root = tmp_path / "data"
    for k in range(3):
        img, gt = synthetic_nuclei((32, 40), n=2, seed=k)
        write_png_atomic(root / "images" / f"s{k}.png", (img // 256).astype(np.uint8))
        if k != 1:
            write_png_atomic(root / "masks" / f"s{k}.png", gt)
    reader = get_reader(str(root))
    assert reader is not None
    layers = reader(str(root))
    assert layers[0][0].shape == (3, 32, 40) and layers[0][2] == "image"
    assert layers[1][0].shape == (3, 32, 40) and layers[1][2] == "labels"
    assert not layers[1][0][1].any()  # the image without a mask gets an empty slice
    # Mixed sizes -> one layer each; files and empty folders are not ours.
    write_png_atomic(root / "images" / "odd.png", np.zeros((10, 10), np.uint8))
    names = [meta["name"] for _, meta, kind in get_reader(str(root))(str(root)) if kind == "image"]
    assert names == ["odd", "s0", "s1", "s2"]
    assert get_reader(str(tmp_path / "l.tif")) is None
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "empty")) is None


def test_sample_data_is_deterministic_and_consistent():
    from napari_samsp import _sample_data

    a, la = synthetic_nuclei((64, 64), n=5, seed=3)
    b, lb = synthetic_nuclei((64, 64), n=5, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.dtype == np.uint16 and la.max() == 5
    # Nuclei are brighter than the background.
    assert a[la > 0].mean() > 2 * a[la == 0].mean()
    stack, ls = synthetic_nuclei_stack((6, 48, 48), n=3, seed=1)
    assert stack.shape == ls.shape == (6, 48, 48) and ls.max() == 3
    us, mask = synthetic_ultrasound((60, 80), seed=0)
    assert us.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    for fn in (_sample_data.nuclei_sample, _sample_data.ultrasound_sample, _sample_data.nuclei_3d_sample):
        (img, img_meta, kind), (lab, lab_meta, lab_kind) = fn()
        assert (kind, lab_kind) == ("image", "labels") and img.shape[: lab.ndim] == lab.shape
        assert lab_meta["name"].endswith("ground truth")
