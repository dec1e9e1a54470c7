"""Shows a run in the widget while it goes: the progress bar and status, and the result Labels layer's
refreshes, together, at the pace :class:`RefreshPacer` sets.

Every visible change costs a redraw: a layer refresh redraws the canvas, and with an OpenGL canvas in the
window even a progress bar's repaint makes Qt compose the whole window through OpenGL. Without a GPU
(Xvfb, Mesa's llvmpipe) each costs CPU taken from the engine, so engine events only update state here,
and one paced tick shows the latest of them and refreshes the layer (docs/benchmarks.md, bench --gui).
A tick's cost is the GUI thread's longest stall in the moment after it: napari's re-slicing runs inside
``refresh()`` and the paint a turn or two of the event loop later, so a short probe timer that notes how
late its ticks come measures both without reaching into napari's canvas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Qt, QTimer

from napari_ddunet.plugin.live import RefreshPacer

#: Period of the probe that times the paint after a tick (ms).
PROBE_MS = 2
#: How long after a tick the probe watches for the paint's stall (s).
PROBE_WINDOW_S = 0.25


class LiveDisplay(QObject):
    """One run's live display: ``start``, ``update`` per engine event, ``flush`` on return, ``stop`` at the end."""

    def __init__(self, show: Callable[[Any], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.show = show  # puts one engine event on screen (progress bar, status line)
        self.layer: Any = None
        self.pacer = RefreshPacer()
        self.refreshes = 0
        self._event: Any = None
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
        """Begin showing a run that writes into ``layer`` (pacing starts afresh: the canvas may have changed)."""
        self.layer, self.pacer, self.refreshes = layer, RefreshPacer(), 0
        self._event, self._dirty = None, False
        self._next.start(int(self.pacer.shortest_s * 1000))

    def retarget(self, layer: Any) -> None:
        """The run's labels moved to another layer object (its data arrived with the first event)."""
        self.layer = layer

    def update(self, event: Any) -> None:
        """Note an engine event; it is shown at the next tick, and its written region refreshes the layer then."""
        self._event = event
        self._dirty = self._dirty or event.region is not None

    def flush(self) -> None:
        """Show what is pending now (the run returned: its final status comes next)."""
        self._show()

    def stop(self) -> None:
        """The run ended: one last refresh shows everything it wrote."""
        self._next.stop()
        self._probe.stop()
        self._event, self._dirty = None, True
        self._show()

    def _show(self) -> bool:
        """Put the pending event and the written labels on screen; False when nothing changed."""
        event, self._event = self._event, None
        if event is not None:
            self.show(event)
        refresh = self._dirty and self.layer is not None
        if refresh:
            self._dirty = False
            self.refreshes += 1
            self.layer.refresh()
        return event is not None or refresh

    def _due(self) -> None:
        self._started_at = time.perf_counter()
        if not self._show():
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
