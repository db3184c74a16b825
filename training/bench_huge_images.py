"""Peak memory and time of ``samsp segment`` on huge synthetic TIFFs (issue 13; numbers in docs/RELIABILITY.md).

For each side N a gray uint8 N x N TIFF of bright discs on noise is written band by band (never
whole in memory), then ``python -m napari_samsp.cli segment`` runs on it in a child process. The
child's peak resident memory comes from ``os.wait4``'s rusage (``ru_maxrss``: every page the process
touched, file-backed ones included); the time is wall-clock, model loading included.

    python training/bench_huge_images.py --sizes 4096 10240 20480 --threads 2 [--in-memory 4096]

``--in-memory N`` also runs side N through the whole-image path (``segment_tiled``, forced with
``SAMSP_TILE_TO_DISK_PIXELS``) for comparison. Prints one Markdown table row per run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_synthetic(path: Path, side: int, seed: int = 0) -> None:
    """An uncompressed gray uint8 TIFF of discs (radius 6-14 px) on noise, written 512 rows at a time."""
    import tifffile

    rng = np.random.default_rng(seed)
    mm = tifffile.memmap(path, shape=(side, side), dtype=np.uint8, photometric="minisblack")
    yy, xx = np.mgrid[-15:16, -15:16]
    discs = [(yy**2 + xx**2 <= r * r) * 140.0 for r in range(6, 15)]
    for y0 in range(0, side, 512):
        rows = min(512, side - y0)
        band = rng.normal(40, 12, (rows, side)).astype(np.float32)
        for cy in range(16, rows - 16, 48):
            for cx in range(16, side - 16, 48):
                band[cy - 15 : cy + 16, cx - 15 : cx + 16] += discs[rng.integers(len(discs))]
        mm[y0 : y0 + rows] = np.clip(band, 0, 255).astype(np.uint8)
        mm.flush()
    del mm


def run_one(
    image: Path, out: Path, threads: int, env_extra: dict[str, str], device: str = "cpu", timeout: float | None = None
) -> tuple[float, float, int, int]:
    """(seconds, peak RSS in MiB, exit code, tiles) of one ``samsp segment`` child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), **env_extra}
    cmd = [sys.executable, "-m", "napari_samsp.cli", "segment", str(image), "-o", str(out),
           "--threads", str(threads), "--device", device]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout, proc.kill) if timeout else None  # a run cut short still reports its tiles
    if timer is not None:
        timer.start()
    lines = proc.stdout.read().splitlines()
    _, status, usage = os.wait4(proc.pid, 0)
    if timer is not None:
        timer.cancel()
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    tiles = sum(1 for line in lines if ": tile " in line)
    total = next((line.rsplit("/", 1)[1] for line in reversed(lines) if ": tile " in line), "")
    if tiles and total and str(tiles) != total:
        print(f"(stopped after {tiles} of {total} tiles)", flush=True)
    if code != 0:
        print("\n".join(lines[-5:]), file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, code, tiles


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 10240])
    ap.add_argument("--in-memory", type=int, nargs="*", default=[], help="sides to run through segment_tiled too")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (peak RSS is host memory either way)")
    ap.add_argument("--timeout", type=float, default=None, help="stop each run after this many seconds")
    ap.add_argument("--workdir", default=None, help="where the synthetic TIFFs go (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="samsp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()} visible, "
          f"threads {args.threads}, device {args.device}, python {platform.python_version()}")
    print("| image | path | tiles | time (s) | s / tile | peak RSS (MiB) | exit |")
    print("|---|---|---|---|---|---|---|")
    runs = [(n, "tiled to disk", {"SAMSP_TILE_TO_DISK_PIXELS": "1"}) for n in args.sizes]
    runs += [(n, "in memory (segment_tiled)", {"SAMSP_TILE_TO_DISK_PIXELS": str(10**12)}) for n in args.in_memory]
    for side, label, env in runs:
        image = work / f"synthetic_{side}.tif"
        if not image.exists():
            write_synthetic(image, side)
        out = work / f"out_{side}_{'disk' if 'disk' in label else 'mem'}"
        seconds, rss, code, tiles = run_one(image, out, args.threads, env, args.device, args.timeout)
        per_tile = f"{seconds / tiles:.2f}" if tiles else ""
        print(f"| {side} x {side} uint8 | {label} | {tiles or ''} | {seconds:.0f} | {per_tile} | {rss:.0f} | {code} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
