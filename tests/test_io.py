"""napari_samsp.io: reading, atomic writing, the data layout and splits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_samsp.errors import DataLayoutError, InputImageError
from napari_samsp.io import (
    Pair,
    check_pair,
    find_images,
    hash_split,
    image_size,
    list_pairs,
    pixel_hash,
    read_image,
    read_mask,
    read_pair,
    read_splits,
    split_pairs,
    write_atomic,
    write_json_atomic,
    write_png_atomic,
    write_tiff_atomic,
)


def _make_layout(root: Path, stems, size=(8, 10), mask_sizes=None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for stem in stems:
        write_png_atomic(root / "images" / f"{stem}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        mask_size = (mask_sizes or {}).get(stem, size)
        mask = np.zeros(mask_size, np.uint8)
        mask[1:4, 2:5] = 255
        write_png_atomic(root / "masks" / f"{stem}.png", mask)
    return root


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- reading


def test_uint16_tiff_round_trip_keeps_dtype_and_values(tmp_path):
    image = (np.arange(12 * 9, dtype=np.uint16).reshape(12, 9) * 601).astype(np.uint16)
    assert image.max() > 255
    path = write_tiff_atomic(tmp_path / "a.tif", image)
    back = read_image(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, image)
    assert image_size(path) == (12, 9)


def test_float_and_rgba_tiff_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    for name, image in {
        "f.tif": rng.normal(size=(5, 7)).astype(np.float32),
        "rgba.tif": rng.integers(0, 255, (6, 4, 4), dtype=np.uint8),
    }.items():
        back = read_image(write_tiff_atomic(tmp_path / name, image))
        assert back.dtype == image.dtype and back.shape == image.shape
        np.testing.assert_array_equal(back, image)


def test_uint16_png_round_trip_is_lossless(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 1
    labels[10:15, 10:20] = 40000
    path = write_png_atomic(tmp_path / "m.png", labels)
    back = read_image(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(read_mask(path), labels)


def test_corrupt_png_raises_input_image_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    with pytest.raises(InputImageError, match="broken.png") as info:
        read_image(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InputImageError, match="broken.png"):
        read_mask(path)


def test_missing_and_garbage_tiff_raise_input_image_error(tmp_path):
    with pytest.raises(InputImageError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\xff" * 40)  # a TIFF header that points nowhere
    with pytest.raises(InputImageError, match="bad.tif"):
        read_image(bad)
    (tmp_path / "text.tif").write_text("hello")
    with pytest.raises(InputImageError, match="text.tif"):
        read_image(tmp_path / "text.tif")


def test_read_mask_binary_and_instance(tmp_path):
    binary = np.zeros((6, 6), np.uint8)
    binary[1:3, 1:3] = 255
    m = read_mask(write_png_atomic(tmp_path / "bin.png", binary))
    assert m.dtype == np.uint16 and set(np.unique(m)) == {0, 1}
    labels = np.zeros((6, 6), np.uint16)
    labels[0, 0], labels[2, 2], labels[5, 5] = 3, 7, 300
    np.testing.assert_array_equal(read_mask(write_png_atomic(tmp_path / "inst.png", labels)), labels)
    small_labels = np.array([[0, 1, 2], [3, 0, 0]], np.uint8)  # uint8 labels (not 0/255) stay labels
    np.testing.assert_array_equal(read_mask(write_png_atomic(tmp_path / "u8.png", small_labels)), small_labels)


def test_read_mask_colour_gives_labels_and_accepts_gray_saved_as_rgb(tmp_path):
    # Changed deliberately (issue 12, point 4): colour masks were rejected here but read as labels
    # by metrics.read_mask; the one read_mask now gives one label per colour, black = background.
    rgb = np.zeros((5, 5, 3), np.uint8)
    rgb[1, 1] = (255, 0, 0)
    rgb[3, 3] = (0, 0, 255)
    m = read_mask(write_png_atomic(tmp_path / "rgb.png", rgb))
    assert m.shape == (5, 5) and set(np.unique(m)) == {0, 1, 2} and m[1, 1] != m[3, 3] and m[0, 0] == 0
    gray = np.zeros((5, 5, 3), np.uint8)
    gray[2:4, 2:4] = 255
    m = read_mask(write_png_atomic(tmp_path / "gray.png", gray))
    assert m.shape == (5, 5) and m.sum() == 4


def test_pixel_hash_depends_on_dtype_shape_and_pixels_not_byte_order():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    h = pixel_hash(a)
    assert len(h) >= 16 and all(c in "0123456789abcdef" for c in h)
    assert pixel_hash(a.copy()) == h
    assert pixel_hash(a.astype(">u2")) == h  # same values, big-endian storage
    assert pixel_hash(a.astype(np.uint8)) != h
    assert pixel_hash(a.reshape(4, 3)) != h
    b = a.copy()
    b[0, 0] = 1
    assert pixel_hash(b) != h
    assert pixel_hash(np.asfortranarray(a)) == h


# ----------------------------------------------------------------------------- atomic writes


def test_write_atomic_keeps_old_file_when_writer_raises(tmp_path):
    target = tmp_path / "data.json"
    write_json_atomic(target, {"version": 1})

    def failing_writer(tmp: Path) -> None:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp.name.startswith(".")
        tmp.write_text('{"version": 2, "trunc')  # a half-written new file...
        raise RuntimeError("disk on fire")  # ...then the writer dies

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(target, failing_writer)
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]  # no temp file left


def test_write_atomic_replaces_and_creates_parent(tmp_path):
    target = tmp_path / "sub" / "x.png"
    write_png_atomic(target, np.full((3, 3), 7, np.uint8))
    write_png_atomic(target, np.full((3, 3), 9, np.uint8))
    assert read_image(target).max() == 9
    assert _hidden(target.parent) == []


def test_write_png_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(InputImageError):
        write_png_atomic(tmp_path / "f.png", np.zeros((3, 3), np.float32))
    assert not (tmp_path / "f.png").exists()


# ----------------------------------------------------------------------------- find_images


def test_find_images_empty_folder_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataLayoutError, match=r"no images in .* \(looked for \.png, \.jpg, \.tif\)"):
        find_images([tmp_path])


def test_find_images_files_and_folders(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.TIF", "c.jpg", "skip.txt", ".hidden.png"):
        (folder / name).write_bytes(b"x")
    single = tmp_path / "z.jpeg"
    single.write_bytes(b"x")
    found = find_images([single, str(folder), folder / "b.png"])
    assert [p.name for p in found] == ["z.jpeg", "a.TIF", "b.png", "c.jpg"]
    with pytest.raises(InputImageError, match="missing"):
        find_images([tmp_path / "missing"])
    with pytest.raises(InputImageError, match="skip.txt"):
        find_images([folder / "skip.txt"])


# ----------------------------------------------------------------------------- data layout


def test_list_pairs_and_read_pair(tmp_path):
    root = _make_layout(tmp_path / "d", ["b", "a"])
    pairs = list_pairs(root)
    assert [p.stem for p in pairs] == ["a", "b"]
    assert pairs[0] == Pair("a", root / "images" / "a.png", root / "masks" / "a.png")
    image, mask = read_pair(pairs[0])
    assert image.shape == (8, 10, 3) and mask.shape == (8, 10) and set(np.unique(mask)) == {0, 1}


def test_list_pairs_mismatched_mask_size_is_reported(tmp_path):
    root = _make_layout(tmp_path / "d", ["a", "b"], mask_sizes={"b": (5, 6)})
    pairs = list_pairs(root)  # listing alone does not decode pixels
    read_pair(pairs[0])
    with pytest.raises(DataLayoutError, match="mask b is 5x6 but its image is 8x10"):
        read_pair(pairs[1])
    with pytest.raises(DataLayoutError, match="mask b is 5x6 but its image is 8x10"):
        list_pairs(root, check_sizes=True)
    with pytest.raises(DataLayoutError, match="mask c is 2x2 but its image is 3x3"):
        check_pair(np.zeros((3, 3, 3)), np.zeros((2, 2)), "c")


def test_list_pairs_missing_masks(tmp_path):
    root = _make_layout(tmp_path / "d", ["a", "b", "c"])
    (root / "masks" / "b.png").unlink()
    with pytest.warns(UserWarning, match="1 of 3 images"):
        pairs = list_pairs(root)
    assert [p.stem for p in pairs] == ["a", "c"]
    for stem in ("a", "c"):
        (root / "masks" / f"{stem}.png").unlink()
    with pytest.raises(DataLayoutError, match="none of the 3 images"):
        list_pairs(root)


def test_list_pairs_layout_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="not found"):
        list_pairs(tmp_path / "nothing")
    (tmp_path / "d" / "images").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match="no masks/ folder"):
        list_pairs(tmp_path / "d")
    (tmp_path / "d" / "masks").mkdir()
    with pytest.raises(DataLayoutError, match="no images in"):
        list_pairs(tmp_path / "d")
    (tmp_path / "d" / "images" / "x.png").write_bytes(b"x")
    (tmp_path / "d" / "images" / "x.tif").write_bytes(b"x")
    with pytest.raises(DataLayoutError, match="share the stem x"):
        list_pairs(tmp_path / "d")


def test_read_splits(tmp_path):
    assert read_splits(tmp_path) is None
    meta = {"name": "x", "seed": 3, "n_val": 1, "val_by_centre": {"C1": 1}}  # metadata as in the public sets
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": [], **meta}))
    assert read_splits(tmp_path) == {"train": ["a"], "val": ["b"], "test": []}
    (tmp_path / "splits.json").write_text("{not json")
    with pytest.raises(DataLayoutError, match="splits.json"):
        read_splits(tmp_path)
    (tmp_path / "splits.json").write_text(json.dumps({"train": "a"}))
    with pytest.raises(DataLayoutError, match="list of stems"):
        read_splits(tmp_path)


# ----------------------------------------------------------------------------- splits


def _pairs(stems):
    return [Pair(s, Path(f"images/{s}.png"), Path(f"masks/{s}.png")) for s in stems]


def test_split_is_deterministic_and_stable():
    stems = [f"img{i:03d}" for i in range(200)]
    train, val = split_pairs(_pairs(stems), None, val_fraction=0.15, seed=0)
    train2, val2 = split_pairs(_pairs(stems), None, val_fraction=0.15, seed=0)
    assert [p.stem for p in val] == [p.stem for p in val2] and [p.stem for p in train] == [p.stem for p in train2]
    assert {p.stem for p in train} | {p.stem for p in val} == set(stems)
    assert not {p.stem for p in train} & {p.stem for p in val}
    assert 15 <= len(val) <= 45  # about 15 % of 200
    # a stem's side does not depend on the other stems or their order
    _, val_more = split_pairs(_pairs(stems[::-1] + [f"new{i}" for i in range(50)]), None, 0.15, 0)
    assert {p.stem for p in val} == {p.stem for p in val_more if p.stem in set(stems)}
    # another seed gives another split
    _, val_seed1 = split_pairs(_pairs(stems), None, 0.15, seed=1)
    assert {p.stem for p in val_seed1} != {p.stem for p in val}


def test_split_small_sets_have_a_val_example():
    assert len(hash_split(["a", "b"], 0.01)) == 1
    assert hash_split(["a"], 0.5) in (set(), {"a"})
    with pytest.raises(ValueError):
        hash_split(["a"], 1.0)


def test_split_with_splits_json():
    pairs = _pairs(["a", "b", "c", "d"])
    train, val = split_pairs(pairs, {"train": ["a", "c"], "val": ["b", "d", "gone"]})
    assert [p.stem for p in train] == ["a", "c"] and [p.stem for p in val] == ["b", "d"]
    with pytest.warns(UserWarning, match="1 pairs are not in splits.json"):
        train, val = split_pairs(pairs, {"train": ["a", "c"], "val": ["b"]})
    assert {p.stem for p in train + val} == {"a", "b", "c", "d"}
    with pytest.raises(DataLayoutError, match="both train and val"):
        split_pairs(pairs, {"train": ["a"], "val": ["a"]})


# ----------------------------------------------------------------------------- the public datasets


@pytest.mark.data
def test_public_datasets_follow_the_layout(data_root):
    expected = {"dsb2018_nuclei": (411, 103), "polypgen_polyps": (1016, 256), "hc18_fetal_head_us": (651, 163)}
    for name, (n_train, n_val) in expected.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every image has its mask, every pair is in splits.json
            pairs = list_pairs(data_root / name)
            train, val = split_pairs(pairs, read_splits(data_root / name))
        assert (len(train), len(val)) == (n_train, n_val)
        image, mask = read_pair(pairs[0])
        assert image.shape[:2] == mask.shape and mask.ndim == 2
        if name == "dsb2018_nuclei":
            assert mask.max() > 1  # instance labels kept
        else:
            assert set(np.unique(mask)) <= {0, 1}  # binary 0/255 read as {0, 1}
