"""Shared test set-up.

OMP_WAIT_POLICY must be set before torch is imported: with the default (active)
policy, OpenMP threads spin and torch slows 50-70x when another process holds a
core of this 2-core machine.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)

DATA_ROOT = Path(os.environ.get("SAMSP_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")).resolve()
DATASETS = ("dsb2018_nuclei", "polypgen_polyps", "hc18_fetal_head_us")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The public datasets folder (``SAMSP_DATA``), or skip with the reason."""
    if not all((DATA_ROOT / name / "images").is_dir() for name in DATASETS):
        pytest.skip(f"public datasets not found under {DATA_ROOT} (set SAMSP_DATA to the folder holding {', '.join(DATASETS)})")
    return DATA_ROOT


@pytest.fixture
def micro_model():
    """A randomly initialised test-sized SAM (128 px, patch 8)."""
    from napari_samsp.models import build_model

    torch.manual_seed(0)
    return build_model("micro").eval()
