"""User-facing messages: the widget's status line (napari notifications only without a widget); never a traceback."""

from __future__ import annotations

import logging

from ..errors import SamspError

log = logging.getLogger("napari_samsp")


def describe(exc: BaseException, context: str | None = None) -> str:
    """One line for the user. Library errors carry their own message; anything else is
    reported by type and first line, and its traceback goes to the log."""
    if isinstance(exc, SamspError):
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    else:
        log.error("unexpected error%s", f" in {context}" if context else "", exc_info=exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"unexpected {type(exc).__name__}" + (f": {first}" if first else "") + " (details in the log)"
    return f"{context}: {text}" if context else text


def _napari_notify(level: str, text: str) -> None:
    try:
        from napari.utils.notifications import show_error, show_info, show_warning

        {"error": show_error, "warning": show_warning}.get(level, show_info)(text)
    except Exception:  # a notification must never break the action that raised it
        log.warning("%s: %s", level, text)


class Messenger:
    """Routes messages to napari notifications, a status callback and a short history (for tests and the UI)."""

    def __init__(self) -> None:
        self.history: list[tuple[str, str]] = []
        self.listeners: list = []

    def _emit(self, level: str, text: str, notify: bool) -> None:
        self.history.append((level, text))
        del self.history[:-200]
        shown = False
        for listener in list(self.listeners):
            try:
                listener(level, text)
                shown = True
            except RuntimeError:  # a deleted Qt widget
                self.listeners.remove(listener)
        # A widget shows every message in its own word-wrapped status line; napari toasts would
        # cover the canvas with truncated text, so they are only the fallback without one.
        if notify and not shown:
            _napari_notify(level, text)

    def error(self, text: str) -> None:
        self._emit("error", text, True)

    def warning(self, text: str) -> None:
        self._emit("warning", text, True)

    def info(self, text: str) -> None:
        self._emit("info", text, True)

    def status(self, text: str) -> None:
        """Status line only (no pop-up)."""
        self._emit("status", text, False)

    def exception(self, exc: BaseException, context: str | None = None) -> None:
        self.error(describe(exc, context))

    def last(self, level: str | None = None) -> str | None:
        for lvl, text in reversed(self.history):
            if level is None or lvl == level:
                return text
        return None
