"""Torch CPU threads for latency-bound work (a click's decode).

A prompted decode runs a few small tensors through the mask decoder. Waking worker
threads for each of its ops costs more than they save: on 2 cores a click with four
mirror views decodes in 35 ms on one thread and 67 ms on two when OpenMP waits
passively (``training/bench_inference.py``, docs/BENCHMARKS.md). The image encoder, the
heavy step, keeps every thread.

Depending on torch's parallel backend, ``torch.set_num_threads`` acts on the calling
thread (OpenMP) or on the whole process. Blocks therefore hold a lock from the change
to the restore, in the thread that made the change, so neither kind of backend is left
with another block's setting; limited blocks in different threads run one at a time
(a decode is tens of milliseconds).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.RLock()


def check_thread_limit(n: int | None, name: str = "a thread limit") -> int | None:
    """``n`` when it is a thread limit (None, or at least 1); ValueError naming ``name`` otherwise."""
    if n is not None and n < 1:
        raise ValueError(f"{name} must be None or at least 1, got {n}")
    return n


@contextmanager
def limited_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` torch CPU threads (None: leave the setting alone)."""
    if check_thread_limit(n) is None:
        yield
        return
    with _lock:
        saved = torch.get_num_threads()
        if saved > n:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch.get_num_threads() != saved:
                torch.set_num_threads(saved)
