"""Checks of ``samsp`` arguments before any work starts (issue 13): one sentence per refusal, exit code 2.

Each check raises :class:`~napari_samsp.errors.SamspError` (the CLI prints it as one line and exits
with 2), so a wrong number or an unusable output path is reported in the first second, not after
minutes of training.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from .errors import DataLayoutError, InputImageError, SamspError

__all__ = ["check_args", "check_channels", "check_output_file", "check_output_folder"]


def _at_least(args: argparse.Namespace, name: str, low: int, flag: str) -> None:
    value = getattr(args, name, None)
    if value is not None and value < low:
        raise SamspError(f"{flag} must be {low} or more, got {value}")


def _writable_folder(folder: Path, what: str) -> None:
    """Refuse unless a file can be created in ``folder`` (or in its nearest existing parent)."""
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise SamspError(f"{what}: {probe_dir} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SamspError(
            f"{what}: cannot write in {probe_dir} ({reason.lower()}); choose a folder you can write to"
        ) from None


def check_output_folder(path: str | os.PathLike[str]) -> None:
    """``segment -o OUT``: OUT must be (or become) a folder this process can write in."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SamspError(f"-o {out} is an existing file; segment writes one label image per input into a folder, "
                         "so give a folder name")
    _writable_folder(out, f"-o {out}")


def check_output_file(path: str | os.PathLike[str]) -> None:
    """``finetune/improve -o OUT.safetensors``: the name, and that its folder is writable."""
    out = Path(path)
    if out.suffix != ".safetensors":
        raise SamspError(f"-o {out}: models are saved as .safetensors (no pickles); use e.g. -o {out.with_suffix('.safetensors').name}")
    if out.is_dir():
        raise SamspError(f"-o {out} is an existing folder; give a file name ending in .safetensors")
    _writable_folder(out.parent, f"-o {out}")


def check_channels(path: Path, image) -> None:
    """Refuse images whose last axis looks like 2 channels: neither gray, RGB nor RGBA."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) >= 3 and shape[-1] == 2:
        raise InputImageError(
            f"{path}: the image has 2 channels (shape {shape}); expected gray, RGB or RGBA: "
            "save one channel, or add a third, and try again"
        )


def _data_has_foreground(dirs) -> None:
    """At least one mask of the training folders must have foreground (reads masks only)."""
    import numpy as np

    from .io import list_pairs, read_mask

    for d in dirs:
        for pair in list_pairs(d):
            try:
                if np.any(read_mask(pair.mask_path)):
                    return
            except (InputImageError, DataLayoutError):
                return  # let the training report the unreadable mask with its own message
    raise InputImageError(
        f"every mask in {', '.join(str(d) for d in dirs)} is empty: there is nothing to learn from; "
        "correct or draw at least one object first"
    )


def _finetune_targets(args: argparse.Namespace) -> None:
    """``finetune`` needs ``--data`` and ``-o`` unless ``--project`` supplies them (its store, a new version)."""
    if args.command != "finetune":
        return
    if args.project is not None:
        from .project import Project

        project = Project(args.project)
        if not args.data and project.store_count() == 0:
            raise DataLayoutError(f"--project {project.root}: its annotation store has no corrected images yet; "
                                  "send corrections from the plugin first, or pass --data DIR")
        return
    if not args.data:
        raise SamspError("--data DIR is required (or --project DIR to train on the project's annotation store)")
    if args.output is None:
        raise SamspError("-o OUT is required (or --project DIR to add the model to the project as a new version)")


def check_args(args: argparse.Namespace) -> None:
    """All argument checks of one ``samsp`` command; raises SamspError on the first problem."""
    cmd = getattr(args, "command", None)
    _at_least(args, "threads", 1, "--threads")
    if cmd == "segment":
        _at_least(args, "passes", 1, "--passes")
        check_output_folder(args.output)
    elif cmd in ("finetune", "improve"):
        _at_least(args, "steps", 1, "--steps")
        _at_least(args, "rounds", 1, "--rounds")
        lr = getattr(args, "lr", None)
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise SamspError(f"--lr must be a positive number, got {lr}")
        split = getattr(args, "val_split", None)
        if split is not None and not (0.0 <= split < 1.0):
            raise SamspError(f"--val-split is the share of images kept for validation: a number in [0, 1), got {split}")
        _finetune_targets(args)
        if args.output is not None:
            check_output_file(args.output)
        _data_has_foreground(args.data or [Path(args.project) / "store"])
