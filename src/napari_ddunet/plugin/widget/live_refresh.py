"""Redraws the result Labels layer while a run writes into it, at the pace :class:`RefreshPacer` sets.

A refresh's cost is the GUI thread's longest stall in the moment after it: napari's re-slicing runs
inside ``refresh()``, and the canvas paints a turn or two of the event loop later, so a short
probe timer that notes how late its ticks come measures both without reaching into napari's canvas.
"""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtCore import QObject, Qt, QTimer

from napari_ddunet.plugin.live import RefreshPacer

#: Period of the probe that times the paint after a refresh (ms).
PROBE_MS = 2
#: How long after a refresh the probe watches for the paint's stall (s).
PROBE_WINDOW_S = 0.25


class LiveRefresh(QObject):
    """Owns the live refreshes of one run: ``start``, ``mark_dirty`` per written region, ``stop`` at the end."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.layer: Any = None
        self.pacer = RefreshPacer()
        self.refreshes = 0
        self._dirty = False
        self._started_at = 0.0
        self._ticks: list[float] = []
        self._next = QTimer(self, singleShot=True)
        self._next.setTimerType(Qt.TimerType.PreciseTimer)  # a coarse timer may fire 5 % early
        self._next.timeout.connect(self._due)
        self._probe = QTimer(self, interval=PROBE_MS)
        self._probe.setTimerType(Qt.TimerType.PreciseTimer)
        self._probe.timeout.connect(self._tick)

    def start(self, layer: Any) -> None:
        """Begin refreshing ``layer`` (pacing starts afresh: the canvas may have changed since the last run)."""
        self.layer, self.pacer, self.refreshes, self._dirty = layer, RefreshPacer(), 0, False
        self._next.start(int(self.pacer.shortest_s * 1000))

    def retarget(self, layer: Any) -> None:
        """The run's labels moved to another layer object (its data arrived with the first event)."""
        self.layer = layer

    def mark_dirty(self) -> None:
        self._dirty = True

    def stop(self) -> None:
        """The run ended: one last refresh shows everything it wrote."""
        self._next.stop()
        self._probe.stop()
        self._dirty = True
        self._refresh()

    def _refresh(self) -> bool:
        if not self._dirty or self.layer is None:
            return False
        self._dirty = False
        self.refreshes += 1
        self.layer.refresh()
        return True

    def _due(self) -> None:
        self._started_at = time.perf_counter()
        if not self._refresh():
            self._next.start(int(self.pacer.shortest_s * 1000))
            return
        self._ticks = [time.perf_counter()]
        self._probe.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self._ticks.append(now)
        if now - self._ticks[0] < PROBE_WINDOW_S:
            return
        self._probe.stop()
        stall = max(b - a for a, b in zip(self._ticks, self._ticks[1:], strict=False)) - PROBE_MS / 1000
        self.pacer.record(self._ticks[0] - self._started_at + stall)
        wait = self.pacer.interval_s() - (now - self._started_at)
        self._next.start(max(0, int(wait * 1000)))
