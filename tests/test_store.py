"""napari_samsp.store: the append-only, crash-safe annotation store."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_samsp import store as store_module
from napari_samsp.errors import InputImageError
from napari_samsp.io import list_pairs, read_image, read_splits, split_pairs
from napari_samsp.store import AnnotationStore

REPO = Path(__file__).resolve().parents[1]


def _image(i: int, shape=(12, 16)) -> np.ndarray:
    """A uint16 image whose pixels encode ``i`` (every pixel >= i * 100, corner = i)."""
    img = (np.arange(shape[0] * shape[1], dtype=np.uint16).reshape(shape) % 97) + np.uint16(i * 100)
    img[0, 0] = i
    return img


def _labels(i: int, shape=(12, 16)) -> np.ndarray:
    """Instance labels whose layout encodes ``i``."""
    lab = np.zeros(shape, np.uint16)
    lab[1 : 2 + i % 7, 1:5] = 1 + i % 3
    lab[6:10, 8 : 9 + i % 5] = 2 + i % 3
    return lab


def _files(root: Path) -> dict[str, list[str]]:
    return {sub: sorted(p.name for p in (root / sub).iterdir()) for sub in ("images", "masks")}


def _manifest_bytes(root: Path) -> bytes:
    path = root / "manifest.jsonl"
    return path.read_bytes() if path.exists() else b""


# ----------------------------------------------------------------------------- basics


def test_add_and_reload(tmp_path):
    store = AnnotationStore(tmp_path / "s")
    image = _image(3)
    labels = _labels(3)
    entry = store.add(image, labels, source="/data/cells 01.tif", model_version="v7", corrected=True)
    assert entry.stem.startswith("cells_01_") and entry.stem.endswith(entry.pixel_hash[:10])
    assert entry.n_objects == 2 and entry.mask_kind == "instance" and entry.model_version == "v7"
    assert entry.image_path == tmp_path / "s" / "images" / f"{entry.stem}.tif"
    assert entry.mask_path == tmp_path / "s" / "masks" / f"{entry.stem}.png"
    assert entry.time.endswith("+00:00")

    reopened = AnnotationStore(tmp_path / "s")
    assert len(reopened) == 1 and entry.stem in reopened
    got = reopened.get(entry.stem)
    assert got == entry
    img, lab = reopened.load(entry.stem)
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(lab, labels)
    assert reopened.verify() == []
    record = json.loads(_manifest_bytes(tmp_path / "s").decode().splitlines()[-1])
    assert record["source"] == "/data/cells 01.tif" and record["slice_index"] is None
    assert record["image_shape"] == [12, 16] and record["corrected"] is True


def test_binary_masks_are_stored_as_0_255(tmp_path):
    store = AnnotationStore(tmp_path)
    rgb = np.random.default_rng(0).integers(0, 255, (10, 9, 3), dtype=np.uint8)
    mask = np.zeros((10, 9), bool)
    mask[2:5, 2:5] = True
    mask[7:9, 6:8] = True
    entry = store.add(rgb, mask, name="polyp", corrected=False)
    on_disk = read_image(entry.mask_path)
    assert on_disk.dtype == np.uint8 and set(np.unique(on_disk)) == {0, 255}
    assert entry.mask_kind == "binary" and entry.n_objects == 2 and store.corrected_count() == 0
    img, lab = store.load(entry.stem)
    np.testing.assert_array_equal(img, rgb)
    np.testing.assert_array_equal(lab, mask)


def test_same_image_resent_updates_the_entry(tmp_path):
    store = AnnotationStore(tmp_path)
    image = _image(5)
    first = store.add(image, _labels(1), source="a.png", model_version="v1", corrected=False)
    newer = _labels(2)
    second = store.add(image.copy(), newer, source="renamed.png", model_version="v2")
    assert second.stem == first.stem  # keyed by pixels (+ slice), not by name
    assert len(store) == 1 and store.corrected_count() == 1
    _, lab = store.load(first.stem)
    np.testing.assert_array_equal(lab, newer)
    assert store.get(first.stem).model_version == "v2"
    assert len(_manifest_bytes(tmp_path).splitlines()) == 2  # append-only: both records kept
    assert _files(tmp_path)["masks"] == [f"{first.stem}.png"]
    assert store.verify() == []


def test_slices_are_separate_entries(tmp_path):
    store = AnnotationStore(tmp_path)
    plane = _image(1)
    a = store.add(plane, _labels(1), source="stack.tif", slice_index=5)
    b = store.add(plane, _labels(2), source="stack.tif", slice_index=6)
    c = store.add(plane, _labels(3), source="stack.tif")
    assert a.stem.endswith("_z0005") and b.stem.endswith("_z0006") and len({a.stem, b.stem, c.stem}) == 3
    assert len(store) == 3
    again = store.add(plane, _labels(4), source="stack.tif", slice_index=np.int64(5))
    assert again.stem == a.stem and len(store) == 3
    assert store.find(plane, slice_index=6).stem == b.stem and store.find(_image(9)) is None


def test_wrong_shape_labels_rejected_with_nothing_written(tmp_path):
    store = AnnotationStore(tmp_path)
    store.add(_image(1), _labels(1))
    before_files, before_manifest = _files(tmp_path), _manifest_bytes(tmp_path)
    with pytest.raises(InputImageError, match="labels are 12x15 but the image is 12x16"):
        store.add(_image(2), np.ones((12, 15), np.uint16))
    with pytest.raises(InputImageError, match="labels are 2x12x16"):
        store.add(_image(2), np.ones((2, 12, 16), np.uint16))
    with pytest.raises(InputImageError, match="NaN"):
        store.add(_image(2), np.full((12, 16), np.nan))
    with pytest.raises(InputImageError, match="slice by slice"):
        store.add(np.zeros((3, 12, 16)), np.ones((12, 16)))
    assert _files(tmp_path) == before_files
    assert _manifest_bytes(tmp_path) == before_manifest
    fresh = AnnotationStore(tmp_path / "fresh")
    with pytest.raises(InputImageError):
        fresh.add(_image(2), np.ones((3, 3), np.uint8))
    assert _files(tmp_path / "fresh") == {"images": [], "masks": []}
    assert not (tmp_path / "fresh" / "manifest.jsonl").exists()


def test_empty_mask_rejected_unless_allowed(tmp_path):
    store = AnnotationStore(tmp_path)
    with pytest.raises(InputImageError, match="the mask is empty: nothing to send"):
        store.add(_image(1), np.zeros((12, 16), np.uint16))
    assert len(store) == 0 and _files(tmp_path) == {"images": [], "masks": []}
    entry = store.add(_image(1), np.zeros((12, 16), np.uint16), allow_empty=True)
    assert entry.n_objects == 0 and store.load(entry.stem)[1].max() == 0


def test_store_is_a_training_folder(tmp_path):
    store = AnnotationStore(tmp_path)
    stems = [store.add(_image(i), _labels(i), name=f"img{i}").stem for i in range(6)]
    pairs = list_pairs(tmp_path, check_sizes=True)
    assert sorted(p.stem for p in pairs) == sorted(stems)
    splits = read_splits(tmp_path)
    assert sorted(splits["train"] + splits["val"]) == sorted(stems) and splits["val"]
    train, val = split_pairs(pairs, splits)
    assert {p.stem for p in val} == set(splits["val"]) and len(train) + len(val) == 6
    assert store.splits() == splits  # deterministic, and what every add wrote
    # existing stems keep their side when more entries arrive (unless needed as the only val example)
    store.add(_image(50), _labels(50), name="img50")
    assert set(read_splits(tmp_path)["train"]) >= set(splits["train"]) - set(read_splits(tmp_path)["val"])


def test_remove_appends_a_tombstone(tmp_path):
    store = AnnotationStore(tmp_path)
    keep = store.add(_image(1), _labels(1))
    gone = store.add(_image(2), _labels(2))
    store.remove(gone.stem)
    assert [e.stem for e in store.entries()] == [keep.stem] and gone.stem not in store
    assert [p.stem for p in list_pairs(tmp_path)] == [keep.stem]
    assert (tmp_path / "trash" / "masks" / f"{gone.stem}.png").exists()
    assert gone.stem not in json.dumps(read_splits(tmp_path))
    ops = [json.loads(line)["op"] for line in _manifest_bytes(tmp_path).splitlines()]
    assert ops == ["add", "add", "remove"]
    with pytest.raises(KeyError):
        store.remove(gone.stem)
    back = store.add(_image(2), _labels(2))  # re-adding brings it back
    assert back.stem == gone.stem and len(store) == 2
    # a crash between the tombstone and the move: the next opening moves the files
    with open(tmp_path / "manifest.jsonl", "ab") as f:
        f.write(json.dumps({"v": 1, "op": "remove", "stem": keep.stem, "rid": "x", "time": ""}).encode() + b"\n")
    AnnotationStore(tmp_path)
    assert [p.stem for p in list_pairs(tmp_path)] == [back.stem]
    assert (tmp_path / "trash" / "images" / f"{keep.stem}.tif").exists()


def test_entry_with_deleted_files_is_skipped_and_reported(tmp_path):
    store = AnnotationStore(tmp_path)
    a = store.add(_image(1), _labels(1))
    b = store.add(_image(2), _labels(2))
    b.image_path.unlink()
    with pytest.warns(UserWarning, match="1 entries .* missing files"):
        entries = store.entries()
    assert [e.stem for e in entries] == [a.stem]
    assert store.missing() == [b.stem] and len(store) == 1
    with pytest.raises(KeyError):
        store.load(b.stem)
    assert store.verify() == [f"{b.stem}: missing files"]


def test_trailing_partial_manifest_line_is_ignored_then_repaired(tmp_path):
    store = AnnotationStore(tmp_path)
    a = store.add(_image(1), _labels(1))
    with open(tmp_path / "manifest.jsonl", "ab") as f:
        f.write(b'{"v":1,"op":"add","stem":"half-writ')  # a record cut by a crash
    assert [e.stem for e in store.entries()] == [a.stem]  # readers ignore it
    with pytest.warns(UserWarning, match="dropped a partial last record"):
        AnnotationStore(tmp_path)  # the next writer (or opener, when no writer is busy) drops it
    assert _manifest_bytes(tmp_path).endswith(b"}\n")
    with open(tmp_path / "manifest.jsonl", "ab") as f:
        f.write(b'{"v":1,"op":"add"')
    with pytest.warns(UserWarning, match="dropped a partial last record"):
        b = store.add(_image(2), _labels(2))
    lines = _manifest_bytes(tmp_path).splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    assert [e.stem for e in store.entries()] == [a.stem, b.stem]


def test_manifest_reader_follows_appends_and_rewrites(tmp_path):
    writer, reader = AnnotationStore(tmp_path), AnnotationStore(tmp_path)
    a = writer.add(_image(1), _labels(1))
    assert [e.stem for e in reader.entries()] == [a.stem]
    b = writer.add(_image(2), _labels(2))
    assert [e.stem for e in reader.entries()] == [a.stem, b.stem]  # parsed incrementally
    # rewrite the file behind the reader's back (same size, other content): it must notice
    lines = _manifest_bytes(tmp_path).splitlines(keepends=True)
    (tmp_path / "manifest.jsonl").write_bytes(lines[1] + lines[0])
    assert [e.stem for e in reader.entries()] == [b.stem, a.stem]
    (tmp_path / "manifest.jsonl").write_bytes(lines[0])
    assert [e.stem for e in reader.entries()] == [a.stem]


def test_threads_adding_concurrently(tmp_path):
    stores = [AnnotationStore(tmp_path), AnnotationStore(tmp_path)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(k * 10, k * 10 + 6):
                stores[k % 2].add(_image(i), _labels(i), name=f"t{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = AnnotationStore(tmp_path)
    assert len(fresh) == 18 and fresh.verify() == []
    assert len(_manifest_bytes(tmp_path).splitlines()) == 18


# ----------------------------------------------------------------------------- failures mid-write


def test_failure_before_the_commit_leaves_no_entry(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path)
    kept = store.add(_image(1), _labels(1))
    before_manifest = _manifest_bytes(tmp_path)

    seen = []

    def boom(path, data):
        seen.append(_files(tmp_path))  # what is in place when the manifest line would be written
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_append_line", boom)
    with pytest.raises(OSError, match="disk full"):
        store.add(_image(2), _labels(2), name="new")
    assert len(seen[0]["images"]) == 2 and len(seen[0]["masks"]) == 2  # both files were written...
    assert [e.stem for e in store.entries()] == [kept.stem]  # ...but without the manifest line, no entry
    assert _files(tmp_path) == {"images": [f"{kept.stem}.tif"], "masks": [f"{kept.stem}.png"]}
    assert _manifest_bytes(tmp_path) == before_manifest
    assert not (tmp_path / ".pending.json").exists()
    # an update that fails keeps the previous mask
    with pytest.raises(OSError, match="disk full"):
        store.add(_image(1), _labels(6))
    np.testing.assert_array_equal(store.load(kept.stem)[1], _labels(1))
    assert not (tmp_path / ".pending-mask.png").exists()
    monkeypatch.undo()
    store.add(_image(2), _labels(2), name="new")
    assert len(store) == 2 and store.verify() == []


_CRASH_CHILD = """
import os, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_store import _image, _labels
from napari_samsp import store as store_module
store = store_module.AnnotationStore({root!r})
store.add(_image(1), _labels(1), name="first")
store.add(_image(2), _labels(2), name="second")
def crash(path, data):
    os._exit(3)  # die like a SIGKILL: no clean-up, no exception handlers
store_module._append_line = crash
if {update!r}:
    store.add(_image(1), _labels(5), name="first")
else:
    store.add(_image(3), _labels(3), name="third")
"""


@pytest.mark.parametrize("update", [False, True], ids=["new", "update"])
def test_crash_between_files_and_manifest_is_rolled_back(tmp_path, update):
    """Deterministic crash at the worst moment: image and mask renamed in place, no manifest line."""
    root = tmp_path / "s"
    code = _CRASH_CHILD.format(tests=str(Path(__file__).parent), root=str(root), update=update)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert (root / ".pending.json").exists()  # the crash left its intent behind
    assert len(list((root / "images").iterdir())) == (2 if update else 3)
    store = AnnotationStore(root)  # opening recovers
    assert sorted(e.source or e.stem.split("_")[0] for e in store.entries()) == ["first", "second"]
    assert store.verify() == []
    assert sorted(p.stem for p in list_pairs(root)) == sorted(e.stem for e in store.entries())
    first = next(e for e in store.entries() if e.stem.startswith("first"))
    np.testing.assert_array_equal(store.load(first.stem)[1], _labels(1))  # the old mask is back
    assert not (root / ".pending.json").exists() and not (root / ".pending-mask.png").exists()


# ----------------------------------------------------------------------------- the kill test

_KILL_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_store import _image, _labels
from napari_samsp.store import AnnotationStore
store = AnnotationStore({root!r})
print("ready", flush=True)
for i in range({n}):
    entry = store.add(_image(i), _labels(i), source=f"/data/img{{i}}.tif", model_version="m1")
    print(i, entry.stem, flush=True)
"""


def _read_lines(proc: subprocess.Popen, count: int, timeout: float = 60.0) -> list[str]:
    """Read ``count`` lines from the child's stdout (raw fd, no buffering surprises)."""
    fd = proc.stdout.fileno()
    buf, deadline = b"", time.monotonic() + timeout
    while buf.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"child too slow; got {buf!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"child ended early: {buf!r} {proc.stderr.read()!r}"
            buf += chunk
    return buf.decode().split("\n")


@pytest.mark.parametrize("commits, delay", [(1, 0.0), (6, 0.002), (15, 0.011)])
def test_sigkill_during_adds_loses_nothing_committed(tmp_path, commits, delay):
    root = tmp_path / "store"
    n = 200
    code = _KILL_CHILD.format(tests=str(Path(__file__).parent), root=str(root), n=n)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        lines = _read_lines(proc, commits + 1)  # "ready" + some committed entries
        if delay:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = "\n".join(lines) + out.decode()
    printed = {}
    for line in text.split("\n")[:-1]:  # the last piece may be a line cut by the kill
        if line and line != "ready":
            i, stem = line.split()
            printed[stem] = int(i)
    assert len(printed) >= commits and len(printed) < n, "the kill should land mid-run"

    store = AnnotationStore(root)  # reopening repairs what the kill interrupted
    entries = {e.stem: e for e in store.entries()}
    assert set(printed) <= set(entries), "a committed entry was lost"
    assert len(entries) <= len(printed) + 1  # at most the one whose line was written but not printed
    for stem, entry in entries.items():
        i = int(Path(entry.source).stem[3:])
        assert printed.get(stem, i) == i
        image, labels = store.load(stem)
        assert image.shape[:2] == labels.shape
        np.testing.assert_array_equal(image, _image(i))
        np.testing.assert_array_equal(labels, _labels(i))
    assert store.verify() == []
    # nothing half-written or uncommitted is left visible to the training-folder reader
    assert {p.stem for p in list_pairs(root)} == set(entries)
    leftovers = [p.name for d in (root, root / "images", root / "masks") for p in d.iterdir() if ".tmp" in p.name]
    assert leftovers == [] and not (root / ".pending.json").exists()
    # the store keeps working after the crash
    store.add(_image(n + 1), _labels(n + 1), source=f"/data/img{n + 1}.tif")
    assert len(AnnotationStore(root)) == len(entries) + 1
    for line in _manifest_bytes(root).splitlines():
        json.loads(line)
