"""Long work off the GUI thread: napari thread workers with a progress bar, cancel and clean errors.

Work runs in named *slots*: ``"model"`` (everything that uses the predictor: loading,
embedding, auto-segmentation, propagation; one at a time because the predictor holds
one image) and ``"train"`` (fine-tuning, on its own copy of the model). The worker
function gets a :class:`TaskContext` to report progress and poll for cancellation;
exceptions are caught in the worker and handed to the ``on_error`` callback (default:
a one-line napari notification), so no traceback reaches the user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QObject, Signal

from .notify import Messenger


def _is_cancellation(exc: BaseException) -> bool:
    """The worker stopped because it was asked to (not an error to show in red)."""
    return type(exc).__name__ in ("SegmentationCancelled", "TrainingCancelled", "Cancelled")


class TaskContext:
    """Handed to the worker function: ``report(done, total)`` and ``cancelled()`` (thread-safe)."""

    def __init__(self, relay: "_Relay", task: "Task") -> None:
        self._relay = relay
        self._task = task

    def report(self, done: int, total: int) -> None:
        self._relay.progressed.emit(self._task, int(done), int(total))

    def cancelled(self) -> bool:
        return self._task.cancel_event.is_set()


class _Relay(QObject):
    progressed = Signal(object, int, int)


@dataclass
class Task:
    slot: str
    desc: str
    cancel_event: threading.Event = field(default_factory=threading.Event)
    worker: Any = None
    pbar: Any = None
    started: float = field(default_factory=time.perf_counter)
    progress_listeners: list = field(default_factory=list)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class TaskRunner(QObject):
    """Starts at most one task per slot; emits ``changed`` when a slot starts or ends."""

    changed = Signal()

    def __init__(self, messenger: Messenger, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.messenger = messenger
        self.tasks: dict[str, Task] = {}
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._idle_callbacks: dict[str, list[Callable[[], None]]] = {}
        self.closed = False

    # -- queries -----------------------------------------------------------------
    def busy(self, slot: str | None = None) -> bool:
        return bool(self.tasks) if slot is None else slot in self.tasks

    def describe(self, slot: str) -> str | None:
        task = self.tasks.get(slot)
        return None if task is None else task.desc

    def when_idle(self, slot: str, callback: Callable[[], None]) -> None:
        """Run ``callback`` now if ``slot`` is free, else right after its task ends."""
        if slot not in self.tasks:
            callback()
        else:
            self._idle_callbacks.setdefault(slot, []).append(callback)

    # -- running -------------------------------------------------------------------
    def start(
        self,
        slot: str,
        desc: str,
        fn: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        total: int = 0,
        **kwargs: Any,
    ) -> Task | None:
        """Run ``fn(ctx, *args, **kwargs)`` in a thread worker; None if the slot is busy (the user is told)."""
        if self.closed:
            return None
        if slot in self.tasks:
            self.messenger.info(f"busy: {self.tasks[slot].desc} (wait for it to finish, or cancel it)")
            return None
        from napari.qt.threading import create_worker
        from napari.utils import progress

        task = Task(slot, desc)
        ctx = TaskContext(self._relay, task)

        def work():
            try:
                return True, fn(ctx, *args, **kwargs)
            except BaseException as exc:  # handed to the GUI thread, never raised there
                return False, exc

        worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        task.worker = worker
        task.pbar = progress(total=total or 0, desc=desc)
        worker.returned.connect(lambda result, t=task: self._finish(t, result, on_done, on_error))
        self.tasks[slot] = task
        self.messenger.status(f"{desc}...")
        self.changed.emit()
        worker.start()
        return task

    def cancel(self, slot: str) -> bool:
        task = self.tasks.get(slot)
        if task is None:
            return False
        task.cancel()
        self.messenger.status(f"cancelling {task.desc}...")
        return True

    def shutdown(self) -> None:
        """Ask every task to stop (the viewer is closing); results that arrive later are dropped."""
        self.closed = True
        for task in self.tasks.values():
            task.cancel()

    # -- internals -----------------------------------------------------------------
    def _on_progress(self, task: Task, done: int, total: int) -> None:
        pbar = task.pbar
        if pbar is not None:
            try:
                if total and pbar.total != total:
                    pbar.total = total
                delta = done - pbar.n
                if delta > 0:
                    pbar.update(delta)
            except Exception:  # noqa: BLE001 - progress display only: its listeners' errors must not stop the task
                pass
        for listener in task.progress_listeners:
            listener(done, total)

    def _finish(self, task: Task, result, on_done, on_error) -> None:
        if self.tasks.get(task.slot) is task:
            del self.tasks[task.slot]
        if task.pbar is not None:
            task.pbar.close()
        ok, value = result
        try:
            if self.closed:
                return
            if ok:
                if on_done is not None:
                    on_done(value)
            elif on_error is not None:
                on_error(value)
            elif task.cancel_event.is_set() or _is_cancellation(value):
                self.messenger.status(f"cancelled: {task.desc}; nothing was changed")
            else:
                self.messenger.exception(value, task.desc)
        except Exception as exc:  # a bug in a callback: report, keep the UI alive
            self.messenger.exception(exc, task.desc)
        finally:
            self.changed.emit()
            callbacks = self._idle_callbacks.pop(task.slot, [])
            for cb in callbacks:
                try:
                    cb()
                except Exception as exc:  # a bug in a callback: report, run the others
                    self.messenger.exception(exc)
