"""Issue 13, points 3 and 9: model versions shared by processes; temp files of killed saves (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

_ADDER = """
import sys, time
import torch
from napari_samsp.finetune.versions import ModelVersions
from napari_samsp.models import build_model
root, tag, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
torch.manual_seed(0)
model = build_model("micro")
versions = ModelVersions(root)
while time.time() < start:  # every process starts adding at the same moment
    time.sleep(0.005)
for i in range(n):
    info = versions.add(model, {"steps": i, "note": tag})
    versions.activate(info.version)
    print(info.version, flush=True)
"""


def test_processes_adding_and_activating_versions_never_collide(tmp_path):
    n_proc, n_each = 3, 4
    start = time.time() + 8  # time for every interpreter to import torch
    procs = [
        subprocess.Popen([sys.executable, "-c", _ADDER, str(tmp_path), f"p{k}", str(n_each), str(start)],
                         env=ENV, stdout=subprocess.PIPE, text=True)
        for k in range(n_proc)
    ]
    made = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        made += out.split()
    assert len(set(made)) == n_proc * n_each
    files = sorted((tmp_path / "versions").glob("*.safetensors"))
    numbers = [f.name.split("-")[0] for f in files]
    assert len(files) == n_proc * n_each and len(set(numbers)) == len(numbers), numbers
    state = json.loads((tmp_path / "active.json").read_text())
    history = [v for v in state["previous"] if v] + [state["active"]]
    # every activation is remembered: the rollback history holds each version exactly once
    assert sorted(history) == sorted(made)
    assert state["previous"][0] is None


_KILLED_SAVE = """
import os, signal, sys
import torch
import napari_samsp.models.checkpoints as C
from napari_samsp.models import build_model
real = C.save_file
def save_then_die(tensors, path, metadata=None):  # the temporary weights are written, the rename never happens
    real(tensors, path, metadata=metadata)
    os.kill(os.getpid(), signal.SIGKILL)
C.save_file = save_then_die
C.save_model(build_model("micro"), sys.argv[1], {})
"""


def test_temp_files_of_killed_saves_are_swept_on_next_open(tmp_path):
    from napari_samsp.finetune.versions import ModelVersions
    from napari_samsp.models import build_model
    from napari_samsp.models.checkpoints import save_model

    target = tmp_path / "versions" / "m.safetensors"
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(target)], check=False, env=ENV, timeout=120)
        assert proc.returncode == -signal.SIGKILL
    hidden = [p for p in target.parent.iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and not target.exists()  # the second save swept the first one's file
    # a live writer's temporary file (this process) must survive the sweep
    live = target.parent / f".other.safetensors.{os.getpid()}-abcd1234.tmp"
    live.write_bytes(b"in progress")
    ModelVersions(tmp_path)  # opening the project sweeps its versions folder
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == [live.name]
    # and so does the next save to a folder
    other = tmp_path / "out"
    other.mkdir()
    for p in hidden:
        (other / p.name).write_bytes(b"stale")
    save_model(build_model("micro"), other / "m.safetensors", {})
    assert sorted(p.name for p in other.iterdir()) == ["m.json", "m.safetensors"]
