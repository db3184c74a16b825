"""Process-level workarounds needed when running inside napari."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("napari_samsp")


def guard_triton() -> bool:
    """Keep ``triton`` from loading after Mesa's LLVM is in the process; returns True if blocked.

    napari's OpenGL canvas on Mesa (llvmpipe / software rendering, e.g. under Xvfb or on
    machines without a GPU driver) maps ``libLLVM``. torchvision imports ``torch._dynamo``,
    which imports triton, whose own bundled LLVM then crashes the process with a
    segmentation fault. Loading triton first is fine, but in napari the viewer (and its GL
    context) exists before a plugin widget is opened. So: without Mesa's LLVM in the process
    yet, import triton right away; when Mesa's LLVM is already there, mark triton as unavailable: torch then runs without it (it is
    only needed by ``torch.compile`` on GPUs, which the plugin does not use).
    """
    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="ignore") as f:
            maps = f.read()
    except OSError:  # not Linux: no Mesa/LLVM clash known
        return False
    if "libLLVM" not in maps and "libgallium" not in maps:
        # No OpenGL context yet: load triton now, while it is safe (if it is installed at all).
        try:
            import triton  # noqa: F401
        except Exception:  # not installed (ImportError) or broken (any type): torch then runs without it
            pass
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    log.info("Mesa's LLVM is loaded (software OpenGL): triton disabled in this process to avoid a crash")
    return True
