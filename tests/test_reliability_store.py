"""Issue 13, store points: crafted store folders, readers beside writers, killed writers (real processes, kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_samsp.errors import DataLayoutError
from napari_samsp.io import list_pairs, pixel_hash, read_pair
from napari_samsp.store import AnnotationStore

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _image(i: int) -> np.ndarray:
    img = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) % 97) + np.uint16(i * 100)
    img[0, 0] = i
    return img


def _labels(i: int) -> np.ndarray:
    lab = np.zeros((12, 16), np.uint8)
    lab[1 : 3 + i % 7, 1 : 3 + i % 9] = 1
    return lab


# ----------------------------------------------------------------------------- 1. paths outside the store


def _victims(tmp_path: Path) -> list[Path]:
    victims = [tmp_path / "victim.txt", tmp_path / "abs_victim.txt"]
    for v in victims:
        v.write_text("precious")
    return victims


def _record(stem: str, image_file: str, mask_file: str, op: str = "add") -> dict:
    return {"v": 1, "op": op, "stem": stem, "rid": stem + "rid", "time": "", "pixel_hash": "x" * 16,
            "image_file": image_file, "mask_file": mask_file}


def test_pending_file_naming_outside_paths_deletes_nothing(tmp_path):
    root = tmp_path / "store"
    AnnotationStore(root).add(_image(1), _labels(1), name="a")
    victim, abs_victim = _victims(tmp_path)
    for image_file, mask_file in (("../victim.txt", "masks/x.png"), ("images/x.tif", str(abs_victim))):
        (root / ".pending.json").write_text(json.dumps({"record": _record("x", image_file, mask_file),
                                                         "prev_live": False, "prev_mask": False}))
        with pytest.raises(DataLayoutError, match="tampered"):
            AnnotationStore(root)
        with pytest.raises(DataLayoutError, match="tampered"):
            list_pairs(root)
        assert victim.read_text() == "precious" and abs_victim.read_text() == "precious"


def test_manifest_entry_outside_the_store_is_not_read_or_moved(tmp_path):
    root = tmp_path / "store"
    AnnotationStore(root).add(_image(1), _labels(1), name="a")
    outside = tmp_path / "outside"
    (outside / "images").mkdir(parents=True)
    (outside / "masks").mkdir()
    AnnotationStore(outside).add(_image(2), _labels(2), name="b")  # a valid pair outside the store
    victim = next((outside / "images").iterdir())
    with open(root / "manifest.jsonl", "a") as f:  # an entry reaching outside, then its removal (a move to trash/)
        f.write(json.dumps(_record("evil", f"../outside/images/{victim.name}", "../outside/masks/x.png")) + "\n")
        f.write(json.dumps(_record("evil", "", "", op="remove")) + "\n")
    with pytest.raises(DataLayoutError, match="tampered"):
        AnnotationStore(root)
    with pytest.raises(DataLayoutError, match="tampered"):
        list_pairs(root)
    assert victim.is_file() and not (root / "trash").exists()


def test_symlink_leading_outside_is_refused(tmp_path):
    root = tmp_path / "store"
    entry = AnnotationStore(root).add(_image(1), _labels(1), name="a")
    secret = tmp_path / "secret.tif"
    secret.write_bytes(entry.image_path.read_bytes())
    entry.image_path.unlink()
    entry.image_path.symlink_to(secret)
    with pytest.raises(DataLayoutError, match="outside"):
        AnnotationStore(root).entries()


def test_crafted_stem_cannot_name_paths_outside(tmp_path):
    root = tmp_path / "store"
    AnnotationStore(root)
    rec = _record("../../evil", "images/a.tif", "masks/a.png")
    (root / "manifest.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataLayoutError, match="stem"):
        AnnotationStore(root)


# ----------------------------------------------------------------------------- 2. readers see committed data only

_KILL_AT_COMMIT = """
import os, signal, sys
import numpy as np
from napari_samsp import store as S
root, i = sys.argv[1], int(sys.argv[2])
st = S.AnnotationStore(root)
def die(*args, **kwargs):  # the mask and image are on disk; the manifest line is not: killed before the commit
    os.kill(os.getpid(), signal.SIGKILL)
S._append_line = die
img = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) % 97) + np.uint16(i * 100); img[0, 0] = i
lab = np.zeros((12, 16), np.uint8); lab[2:9, 3:14] = 1
st.add(img, lab, name=sys.argv[3])
"""


def _kill_writer_before_commit(root: Path, i: int, name: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_COMMIT, str(root), str(i), name], check=False, env=ENV, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (root / ".pending.json").exists()  # the crash really left an in-flight write


def test_list_pairs_after_crash_lists_only_committed_entries(tmp_path):
    root = tmp_path / "store"
    AnnotationStore(root).add(_image(1), _labels(1), name="a")
    _kill_writer_before_commit(root, 5, "b")  # a new entry, never committed
    pairs = list_pairs(root)
    assert [p.stem for p in pairs] == [s for s in (AnnotationStore(root).entries()[0].stem,)]
    assert all(not p.stem.startswith("b_") for p in pairs)


def test_read_after_crash_during_update_gives_committed_mask(tmp_path):
    root = tmp_path / "store"
    entry = AnnotationStore(root).add(_image(1), _labels(1), name="a")
    _kill_writer_before_commit(root, 1, "a")  # same pixels: an update of entry a, new mask on disk, not committed
    (pair,) = list_pairs(root)
    _, labels = read_pair(pair)
    assert pixel_hash(labels) == entry.mask_hash


def test_read_only_store_with_crashed_writer_leaves_the_entry_out(tmp_path):
    root = tmp_path / "store"
    AnnotationStore(root).add(_image(1), _labels(1), name="a")
    AnnotationStore(root).add(_image(2), _labels(2), name="c")
    _kill_writer_before_commit(root, 1, "a")
    if os.geteuid() == 0:
        pytest.skip("root ignores read-only permissions")
    modes = {p: p.stat().st_mode for p in [root, root / "images", root / "masks"]}
    for p in modes:
        p.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match="interrupted write"):
            pairs = list_pairs(root)
        assert [p.stem[:2] for p in pairs] == ["c_"]
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


_WRITER = """
import sys, time
import numpy as np
from napari_samsp.store import AnnotationStore
st = AnnotationStore(sys.argv[1])
end = time.time() + float(sys.argv[2])
n = 0
while time.time() < end:
    for i in range(3):  # update the same three entries with ever new masks, and add new ones
        img = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) % 97) + np.uint16(i * 100); img[0, 0] = i
        lab = np.zeros((12, 16), np.uint8); lab[1:2 + (n + i) % 10, 1:2 + (n * 7 + i) % 15] = 1
        st.add(img, lab, name=f"e{i}")
    n += 1
print(n)
"""


def test_reader_beside_writer_sees_only_committed_masks(tmp_path):
    root = tmp_path / "store"
    st = AnnotationStore(root)
    for i in range(3):
        st.add(_image(i), _labels(i), name=f"e{i}")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), "4"], env=ENV, stdout=subprocess.PIPE)
    reads = []
    try:
        while writer.poll() is None:
            for pair in list_pairs(root):
                reads.append((pair.stem, pixel_hash(read_pair(pair)[1])))
    finally:
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0 and int(out) > 3
    committed: dict[str, set[str]] = {}
    for line in (root / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        committed.setdefault(rec["stem"], set()).add(rec["mask_hash"])
    assert len(reads) > 10
    stray = [(stem, h) for stem, h in reads if h not in committed[stem]]
    assert not stray, f"{len(stray)} of {len(reads)} reads saw a mask that was never committed"
    assert not AnnotationStore(root).verify()
