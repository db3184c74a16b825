"""Temporary files of interrupted writes: named after their writer's process, swept when it is gone.

A model is written to ``.<name>.<pid>-<random>.tmp`` beside its target and renamed into place
(see :func:`napari_samsp.models.checkpoints.save_model`). A writer killed in between leaves that
file behind; :func:`sweep_stale` removes such files once no process with their ``pid`` runs on
this machine, so a live writer's file (another fine-tune to the same folder) is never touched.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

__all__ = ["sweep_stale", "temp_prefix"]

_OURS = re.compile(r"^\..+\.(?P<pid>[0-9]+)-[A-Za-z0-9_]+\.tmp$")
_LEGACY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkstemp names of earlier versions
_LEGACY_AGE_S = 24 * 3600


def temp_prefix(name: str) -> str:
    """The ``mkstemp`` prefix for a temporary file of ``name`` written by this process."""
    return f".{name}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or cannot tell: keep the file
    return True


def sweep_stale(folder: str | Path) -> list[Path]:
    """Remove temporary files in ``folder`` whose writing process has died; returns what was removed.

    Files of the earlier naming (no pid) are removed when older than a day. Errors are ignored:
    sweeping is a courtesy, never a reason to fail.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _OURS.match(name)
        path = Path(folder) / name
        try:
            if m is not None:
                stale = not _alive(int(m.group("pid")))
            elif _LEGACY.match(name):
                stale = now - path.stat().st_mtime > _LEGACY_AGE_S
            else:
                continue
            if stale and path.is_file():
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed
