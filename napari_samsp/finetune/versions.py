"""Model versions of a project: every fine-tune writes a new file; one is active; rollback.

Layout under ``root``::

    versions/<NNN>-<version8>.safetensors (+ .json card)   one file per version, never overwritten
    active.json                                            {"active": version | null, "previous": [...]}

``active == null`` means the project's base model (the embedded default or the
model the user loaded). ``active.json`` is replaced atomically, so a crash while
switching leaves either the old or the new choice, never a broken one.

Adding, activating and rolling back hold an exclusive ``flock`` on ``root/.versions.lock``,
so processes sharing a project (two plugins, a plugin and the CLI) never give two versions
one number nor lose an activation from the rollback history.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import SamspError, WeightsError
from ..io import write_json_atomic
from ..models.checkpoints import LoadedModel, load_model, read_card, save_model
from ..models.sam_model import SamModel
from ..tempfiles import sweep_stale

try:  # POSIX; elsewhere only one process may add versions at a time
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_NUMBER = re.compile(r"^([0-9]+)-")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    card: dict[str, Any]
    created: str

    @property
    def label(self) -> str:
        """Short human-readable description for lists: number, date and validation Dice."""
        dice = self.card.get("metrics", {}).get("after", {}).get("dice")
        dice_txt = f", val Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
        return f"{self.path.stem} ({self.created[:16].replace('T', ' ')}{dice_txt})"


class ModelVersions:
    """The versions folder of one project."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "versions"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "active.json"
        sweep_stale(self.dir)  # temporary files of fine-tunes killed while saving

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across processes (``flock`` on ``root/.versions.lock``) for read-modify-write."""
        fd = os.open(self.root / ".versions.lock", os.O_RDWR | os.O_CREAT, 0o644) if fcntl is not None else -1
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock

    def _state(self) -> dict[str, Any]:
        if not self._state_path.exists():
            return {"active": None, "previous": []}
        try:
            return json.loads(self._state_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SamspError(f"cannot read {self._state_path}: {exc}") from exc

    def list(self) -> list[VersionInfo]:
        """All versions, oldest first; unreadable files are skipped."""
        out = []
        for path in sorted(self.dir.glob("*.safetensors")):
            try:
                card = read_card(path)
            except WeightsError:  # a foreign or damaged file must not hide the others
                continue
            out.append(VersionInfo(card.get("version", path.stem), path, card, card.get("created", "")))
        return out

    def get(self, version: str) -> VersionInfo:
        for info in self.list():
            if info.version == version or info.path.stem == version:
                return info
        raise SamspError(f"no model version {version!r} in {self.dir}")

    def active(self) -> VersionInfo | None:
        """The active version, or None when the base model is active."""
        version = self._state().get("active")
        return self.get(version) if version else None

    def add(self, model: SamModel, card: dict[str, Any]) -> VersionInfo:
        """Save ``model`` as a new version (not activated); its number is one above the highest so far."""
        import uuid

        version = card.get("version") or uuid.uuid4().hex
        with self._locked():
            numbers = [int(m.group(1)) for p in self.dir.glob("*.safetensors") if (m := _NUMBER.match(p.name))]
            path = self.dir / f"{max(numbers, default=0) + 1:03d}-{version[:8]}.safetensors"
            save_model(model, path, {**card, "version": version})
        return self.get(version)

    def add_active(self, model: SamModel, card: dict[str, Any]) -> VersionInfo:
        """Save ``model`` as a new version and activate it (what fine-tuning and self-improvement both do)."""
        info = self.add(model, card)
        self.activate(info.version)
        return info

    def previous(self) -> list[str | None]:
        """The versions active before the current one, oldest first (None: the base model)."""
        return list(self._state().get("previous", []))

    def activate(self, version: str | None) -> VersionInfo | None:
        """Make ``version`` active (None: the base model); remembers the previous one for rollback."""
        info = self.get(version) if version else None
        with self._locked():
            state = self._state()
            if state.get("active") != (info.version if info else None):
                state["previous"] = [*state.get("previous", []), state.get("active")][-50:]
            state["active"] = info.version if info else None
            write_json_atomic(self._state_path, state)
        return info

    def rollback(self) -> VersionInfo | None:
        """Re-activate the version that was active before the current one."""
        with self._locked():
            state = self._state()
            previous = list(state.get("previous", []))
            if not previous:
                raise SamspError("nothing to roll back to: this is the first model version")
            target = previous.pop()
            state.update(active=target, previous=previous)
            write_json_atomic(self._state_path, state)
        return self.get(target) if target else None

    def load_active(self, device: str = "auto") -> LoadedModel | None:
        """The active version as a :class:`LoadedModel`, or None for the base model."""
        info = self.active()
        return load_model(str(info.path), device=device) if info else None
