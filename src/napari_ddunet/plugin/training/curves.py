"""Live training curves: train/val loss and val mIoU per epoch, drawn with matplotlib in the panel.

The panel calls :meth:`CurvesView.show_history` on epoch events only, so the canvas redraws at most
once per epoch (a draw costs tens of milliseconds on the GUI thread).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

#: (metrics.csv column, legend, axis) of each curve: losses on the left axes, mIoU on the right.
CURVES = (("train_loss", "train loss", 0), ("val_loss", "val loss", 0), ("val_miou", "val mIoU", 1))


def curve_series(history: Sequence[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """(epochs, values) of each curve in ``history`` (the metrics.csv rows), missing or NaN values left out."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for column, _, _ in CURVES:
        epochs, values = [], []
        for row in history:
            value = row.get(column)
            if value in (None, ""):
                continue
            value = float(value)
            if math.isfinite(value):
                epochs.append(int(row["epoch"]))
                values.append(value)
        series[column] = (epochs, values)
    return series


class CurvesView(FigureCanvasQTAgg):
    """A small two-panel figure: losses and mIoU against the epoch."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(4.0, 2.4), layout="constrained")
        super().__init__(self.figure)
        self.loss_axes, self.miou_axes = self.figure.subplots(1, 2)
        self.draws = 0
        self.show_history(())

    def show_history(self, history: Sequence[dict]) -> None:
        """Redraw both panels from the rows so far."""
        series = curve_series(history)
        for axes, title in ((self.loss_axes, "loss"), (self.miou_axes, "val mIoU")):
            axes.clear()
            axes.set_title(title, fontsize=8)
            axes.set_xlabel("epoch", fontsize=7)
            axes.tick_params(labelsize=7)
        for column, legend, panel in CURVES:
            epochs, values = series[column]
            axes = (self.loss_axes, self.miou_axes)[panel]
            axes.plot(epochs, values, marker="o", markersize=2, label=legend)
        self.miou_axes.set_ylim(0.0, 1.0)
        if any(series[column][0] for column in ("train_loss", "val_loss")):
            self.loss_axes.legend(fontsize=6)
        self.draw_idle()
        self.draws += 1
