"""What every recipe in ``training/`` shares: where the data is, which data sets, how to pick images.

In the style of torchvision's ``references/`` (``utils.py`` next to the recipes): the recipes
import this module as ``common`` (their own folder is on ``sys.path`` when run as
``python training/<recipe>.py``) and otherwise call only the public ``napari_samsp`` API.
Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` unless set (see tests/conftest.py): import it
before torch.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The public data sets (dsb2018_nuclei, hc18_fetal_head_us, polypgen_polyps: images/ masks/ splits.json).
DATA_ROOT = Path(os.environ.get("SAMSP_DATA", REPO / ".." / "shared" / "datasets")).resolve()
DATASETS = ("dsb2018_nuclei", "polypgen_polyps", "hc18_fetal_head_us")
INSTANCE_SETS = {"dsb2018_nuclei"}  # data sets whose masks are instance labels
RUNS = REPO / "runs"
FIGURES = REPO / "docs" / "figures"


def resolve_data(entry: str | Path) -> Path:
    """A data set name under :data:`DATA_ROOT`, or a folder given as a path."""
    p = Path(entry)
    return p if p.is_absolute() or p.exists() else DATA_ROOT / str(entry)


def evenly_spaced(items: Sequence, limit: int | None) -> list:
    """``limit`` items spread evenly over ``items`` (all of them when ``limit`` is None or larger)."""
    items = list(items)
    if not limit or limit >= len(items):
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, int(limit)).round().astype(int))
    return [items[i] for i in idx]


def val_pairs(name: str | Path, limit: int | None = None, split: str = "val") -> list:
    """The validation pairs of a data set (``splits.json``), sorted by stem, evenly subsampled.
    ``split="train"``: the training pairs instead, for choosing an inference setting without
    looking at the validation images."""
    from napari_samsp.io import list_pairs, read_splits

    root = resolve_data(name)
    pairs = {p.stem: p for p in list_pairs(root)}
    splits = read_splits(root)
    stems = sorted(splits[split]) if splits and splits.get(split) else sorted(pairs)
    return evenly_spaced([pairs[s] for s in stems if s in pairs], limit)


def load_train_examples(datasets: Sequence[str | Path] = DATASETS, max_side: int = 256, limit: int | None = None) -> list:
    """Every pair of each data set's ``train`` split, preloaded (the pipeline of training/train.py)."""
    from napari_samsp.finetune.data import load_examples
    from napari_samsp.io import list_pairs, read_splits, split_pairs

    out = []
    for entry in datasets:
        root = resolve_data(entry)
        tr, _ = split_pairs(list_pairs(root), read_splits(root))
        tr = tr[:limit] if limit else tr
        out += load_examples(tr, root.name, max_side)
    return out


def set_threads(n: int | None) -> int:
    """Use ``n`` torch threads (default 1: the machines these recipes ran on are shared); returns it."""
    import torch

    n = int(n or 1)
    torch.set_num_threads(n)
    return n


def log_to(path: Path | None) -> Callable[[str], None]:
    """A ``log(msg)`` that prints with a time stamp and appends to ``path`` (when given)."""
    f = None
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        f = Path(path).open("a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if f is not None:
            f.write(line + "\n")
            f.flush()

    return log



def machine() -> str:
    """The CPU in a few words, for benchmark reports: ``"x86_64, 16 cores"``."""
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
