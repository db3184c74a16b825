"""Live training curves: a matplotlib canvas (no pyplot, no global state) with loss and validation Dice."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer


class TrainingPlot(FigureCanvasQTAgg):
    """Loss (left axis) and validation Dice (right axis) against the step; redraws at most 4x a second."""

    def __init__(self, parent=None) -> None:
        fig = Figure(figsize=(4, 2.2), tight_layout=True)
        fig.patch.set_facecolor("#262930")
        super().__init__(fig)
        self.setParent(parent)
        self.ax = fig.add_subplot(111)
        self.ax2 = self.ax.twinx()
        for ax in (self.ax, self.ax2):
            ax.set_facecolor("#262930")
            ax.tick_params(colors="#cccccc", labelsize=7)
            for spine in ax.spines.values():
                spine.set_color("#888888")
        self.ax.set_xlabel("step", color="#cccccc", fontsize=8)
        self.ax.set_ylabel("loss", color="#6cb6ff", fontsize=8)
        self.ax2.set_ylabel("val Dice", color="#ffb86c", fontsize=8)
        self.ax2.set_ylim(0, 1)
        (self._loss_line,) = self.ax.plot([], [], color="#6cb6ff", lw=1)
        (self._val_line,) = self.ax2.plot([], [], "o-", color="#ffb86c", lw=1.5, ms=3)
        self.loss: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._redraw)
        self.setMinimumHeight(150)

    def clear(self) -> None:
        self.loss.clear()
        self.val.clear()
        self._redraw()

    def add_loss(self, step: int, value: float) -> None:
        self.loss.append((int(step), float(value)))
        self._schedule()

    def add_val(self, step: int, dice: float) -> None:
        self.val.append((int(step), float(dice)))
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _redraw(self) -> None:
        """Both curves, with the x-range set from all points every time (a fixed ``set_xlim`` from
        the step-0 validation point would turn autoscaling off and hide the rest of the run)."""
        steps = [x for x, _ in self.loss] + [x for x, _ in self.val]
        if self.loss:
            xs, ys = zip(*self.loss)
            self._loss_line.set_data(xs, ys)
            self.ax.relim()
            self.ax.autoscale_view(scalex=False, scaley=True)
        else:
            self._loss_line.set_data([], [])
        if self.val:
            xs, ys = zip(*self.val)
            self._val_line.set_data(xs, ys)
        else:
            self._val_line.set_data([], [])
        if steps:
            lo, hi = min(steps), max(steps)
            pad = max(0.5, 0.03 * (hi - lo))
            self.ax.set_xlim(lo - pad, hi + pad)
        self.draw_idle()

    def x_range(self) -> tuple[float, float]:
        """The visible step range (for tests and screenshots)."""
        lo, hi = self.ax.get_xlim()
        return float(lo), float(hi)
