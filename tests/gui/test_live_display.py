"""The live display shows engine events and refreshes the labels at a pace set by what that costs the GUI thread,
measured on a real Labels layer."""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer

from napari_ddunet.core.inference.progress import ProgressEvent
from napari_ddunet.plugin.live import REDRAW_SHARE, SHORTEST_REFRESH_S
from napari_ddunet.plugin.widget.live_display import LiveDisplay

#: What each refresh costs in this test: a software canvas's redraw of a big view.
STALL_S = 0.1
#: A precise Qt timer still rounds to whole milliseconds.
TIMER_SLACK_S = 0.002


def _run(viewer, monkeypatch, qtbot, stall_s: float, run_s: float):
    """A run that writes a region every 20 ms for ``run_s`` seconds into a Labels layer whose refresh stalls
    ``stall_s``; returns when each paced refresh began (not flush's and stop's), the events shown and those sent."""
    layer = viewer.add_labels(np.zeros((256, 256), np.uint8))
    starts: list[float] = []
    real_refresh = layer.refresh

    def stalling_refresh(*args, **kwargs):
        starts.append(time.perf_counter())
        time.sleep(stall_s)
        return real_refresh(*args, **kwargs)

    monkeypatch.setattr(layer, "refresh", stalling_refresh)
    shown: list[ProgressEvent] = []
    live = LiveDisplay(shown.append)
    sent: list[ProgressEvent] = []

    def write() -> None:
        sent.append(ProgressEvent("write", len(sent) + 1, 10_000, region=(0, 8, 0, 8)))
        live.update(sent[-1])

    writes = QTimer(interval=20)
    writes.timeout.connect(write)
    writes.start()
    live.start(layer)
    qtbot.wait(int(run_s * 1000))
    writes.stop()
    paced = list(starts)
    live.flush()
    live.stop()
    return paced, shown, sent


def test_costly_refreshes_space_out_to_their_share(make_napari_viewer, monkeypatch, qtbot):
    starts, shown, sent = _run(make_napari_viewer(), monkeypatch, qtbot, STALL_S, run_s=6.0)
    gaps = np.diff(starts)
    assert len(gaps) >= 2
    assert gaps[0] >= SHORTEST_REFRESH_S - TIMER_SLACK_S  # the first refresh has no measurement yet
    assert gaps[1:].min() >= STALL_S / REDRAW_SHARE - TIMER_SLACK_S  # then as the measured cost allows
    assert len(shown) <= len(starts) + 1 and shown[-1] is sent[-1]  # one progress repaint per tick, the latest event


def test_cheap_ticks_come_at_the_shortest_spacing_and_show_the_latest_event(make_napari_viewer, monkeypatch, qtbot):
    starts, shown, sent = _run(make_napari_viewer(), monkeypatch, qtbot, 0.0, run_s=3.0)
    gaps = np.diff(starts)
    assert len(gaps) >= 2 and gaps.min() >= SHORTEST_REFRESH_S - TIMER_SLACK_S  # never closer than the shortest
    assert len(sent) > 2 * len(shown)  # events every 20 ms, repaints once per tick
    assert [e.done for e in shown] == sorted(e.done for e in shown) and shown[-1] is sent[-1]  # flush shows the last
