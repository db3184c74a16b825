"""What the user changed on each image before sending it: clicks, boxes, brush strokes and the
pixels that differ from the model's own proposal. Recorded in the store with every send, so a
mask accepted as proposed is told apart from one a person corrected."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EditCounts:
    """Per image (workspace): prompt clicks, box prompts and brush / fill strokes."""

    clicks: int = 0
    boxes: int = 0
    brush_strokes: int = 0
    proposals: dict = field(default_factory=dict)  # z (None for 2D) -> (H, W) labels the model proposed


class EditTracker:
    """Listens to the companion layers of every workspace of a session.

    ``summary(ws, z, plane)`` gives the dict stored with a send:
    ``{"pixels_edited", "clicks", "boxes", "brush_strokes"}``; ``pixels_edited`` counts the
    pixels of ``plane`` (H, W) whose label differs from the last automatic proposal of that
    plane (all zeros when the model proposed nothing).
    """

    def __init__(self, session) -> None:
        self.session = session
        self._counts: dict[int, EditCounts] = {}
        self._hooked: set[int] = set()
        session.viewer.layers.events.inserted.connect(self._on_inserted)
        session.workspace_changed.connect(self._hook_workspace)

    def counts(self, ws) -> EditCounts:
        return self._counts.setdefault(ws.key, EditCounts())

    # -- listening -----------------------------------------------------------------
    def _hook_workspace(self, ws) -> None:
        if ws is None:
            return
        for layer in ws.companions():
            self._hook(ws, layer)

    def _on_inserted(self, event) -> None:
        ws = self.session.workspace
        if ws is not None and event.value in ws.companions():
            self._hook(ws, event.value)

    def _hook(self, ws, layer) -> None:
        if id(layer) in self._hooked:
            return
        self._hooked.add(id(layer))
        kind = type(layer).__name__
        key = ws.key

        def owner_is_current() -> bool:
            cur = self.session.workspace
            return cur is not None and cur.key == key and layer in cur.companions()

        if kind == "Points":

            def on_points(event) -> None:
                if owner_is_current() and str(getattr(getattr(event, "action", None), "value", "")) == "added":
                    self._counts.setdefault(key, EditCounts()).clicks += max(1, len(getattr(event, "data_indices", ()) or ()))

            layer.events.data.connect(on_points)
        elif kind == "Shapes":

            def on_shapes(event) -> None:
                if owner_is_current() and str(getattr(getattr(event, "action", None), "value", "")) == "added":
                    self._counts.setdefault(key, EditCounts()).boxes += 1

            layer.events.data.connect(on_shapes)
        elif kind == "Labels":

            def on_paint(event) -> None:
                if owner_is_current() and not self.session.workspace.writing:
                    self._counts.setdefault(key, EditCounts()).brush_strokes += 1

            layer.events.paint.connect(on_paint)

    # -- proposals and summaries ---------------------------------------------------
    def set_proposal(self, ws, z: int | None, plane: np.ndarray) -> None:
        """The model's automatic labels of plane ``z`` (H, W), the baseline of ``pixels_edited``."""
        self.counts(ws).proposals[z] = np.array(plane, copy=True)

    def set_stack_proposal(self, ws, labels: np.ndarray) -> None:
        """(Z, H, W) automatic labels of a whole stack."""
        for z in range(labels.shape[0]):
            self.set_proposal(ws, z, labels[z])

    def summary(self, ws, z: int | None, plane: np.ndarray) -> dict[str, int]:
        c = self.counts(ws)
        proposal = c.proposals.get(z)
        plane = np.asarray(plane)
        if proposal is None or proposal.shape != plane.shape:
            edited = int(np.count_nonzero(plane))
        else:
            edited = int(np.count_nonzero(plane != proposal))
        return {"pixels_edited": edited, "clicks": c.clicks, "boxes": c.boxes, "brush_strokes": c.brush_strokes}


def was_corrected(edits: dict[str, int]) -> bool:
    """A person changed the mask: any pixel differs from the proposal, or any prompt / stroke was made."""
    return any(int(v) > 0 for v in edits.values())
