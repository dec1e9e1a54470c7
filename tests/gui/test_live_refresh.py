"""The live refresher spaces refreshes by what they cost the GUI thread, measured on a real Labels layer."""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer

from napari_ddunet.plugin.live import REDRAW_SHARE, SHORTEST_REFRESH_S
from napari_ddunet.plugin.widget.live_refresh import LiveRefresh

#: What each refresh costs in this test: a software canvas's redraw of a big view.
STALL_S = 0.1
#: A precise Qt timer still rounds to whole milliseconds.
TIMER_SLACK_S = 0.002


def _refresh_starts(viewer, monkeypatch, qtbot, stall_s: float, run_s: float) -> list[float]:
    """Refresh a Labels layer kept dirty for ``run_s`` seconds; when each refresh began (the last is stop's)."""
    layer = viewer.add_labels(np.zeros((256, 256), np.uint8))
    starts: list[float] = []
    real_refresh = layer.refresh

    def stalling_refresh(*args, **kwargs):
        starts.append(time.perf_counter())
        time.sleep(stall_s)
        return real_refresh(*args, **kwargs)

    monkeypatch.setattr(layer, "refresh", stalling_refresh)
    live = LiveRefresh()
    writes = QTimer(interval=50)
    writes.timeout.connect(live.mark_dirty)  # a run that writes a region every 50 ms
    writes.start()
    live.start(layer)
    qtbot.wait(int(run_s * 1000))
    writes.stop()
    live.stop()
    return starts


def test_costly_refreshes_space_out_to_their_share(make_napari_viewer, monkeypatch, qtbot):
    starts = _refresh_starts(make_napari_viewer(), monkeypatch, qtbot, STALL_S, run_s=6.0)
    gaps = np.diff(starts[:-1])  # the last one is the final refresh of stop()
    assert len(gaps) >= 2
    assert gaps[0] >= SHORTEST_REFRESH_S - TIMER_SLACK_S  # the first refresh has no measurement yet
    assert gaps[1:].min() >= STALL_S / REDRAW_SHARE - TIMER_SLACK_S  # then as the measured cost allows


def test_cheap_refreshes_come_at_the_shortest_spacing_and_stop_refreshes_once(make_napari_viewer, monkeypatch,
                                                                               qtbot):
    starts = _refresh_starts(make_napari_viewer(), monkeypatch, qtbot, 0.0, run_s=3.0)
    gaps = np.diff(starts[:-1])
    assert len(gaps) >= 2 and gaps.min() >= SHORTEST_REFRESH_S - TIMER_SLACK_S  # never closer than the shortest
