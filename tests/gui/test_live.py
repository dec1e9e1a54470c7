"""Helpers between engine and layers: strided live pyramid levels and progress-event coalescing."""

from __future__ import annotations

import numpy as np

from napari_ddunet.core.inference.engine import ProgressEvent
from napari_ddunet.plugin.live import StridedView, coalesce_events, labels_layer_data


def test_strided_view_reads_every_step_th_pixel():
    base = np.arange(37 * 50).reshape(37, 50)
    view = StridedView(base, 4)
    assert view.shape == (10, 13) and view.size == 130 and view.dtype == base.dtype
    np.testing.assert_array_equal(np.asarray(view), base[::4, ::4])
    np.testing.assert_array_equal(view[2:7, 3], base[8:28:4, 12])
    np.testing.assert_array_equal(view[1:9:2, :5], base[4:36:8, :20:4])


def test_big_in_memory_labels_get_strided_levels():
    labels = np.zeros((4100, 300), np.uint8)
    data, multiscale = labels_layer_data(labels)
    assert multiscale and data[0] is labels
    assert [level.shape for level in data[1:]] == [(2050, 150), (1025, 75), (513, 38)]
    assert labels_layer_data(np.zeros((2048, 2048), np.uint8))[1] is False


def _engine(events, result="result"):
    yield from events
    return result


def test_coalescing_keeps_outputs_and_the_end_and_merges_regions():
    events = [ProgressEvent("prepare", 0, 4, outputs={"labels": None})]
    events += [ProgressEvent("decode", i, 4) for i in range(1, 5)]
    events += [ProgressEvent("write", i, 4, region=(0, 8, 8 * (i - 1), 8 * i)) for i in range(1, 5)]
    events += [ProgressEvent("done", 4, 4)]
    gen = coalesce_events(_engine(events), interval=3600.0)  # nothing passes on time alone
    passed = []
    try:
        while True:
            passed.append(next(gen))
    except StopIteration as stop:
        assert stop.value == "result"
    assert [(e.phase, e.done) for e in passed] == [("prepare", 0), ("done", 4)]  # phase changes pass on time only
    assert passed[0].outputs == {"labels": None}
    assert passed[1].region == (0, 8, 0, 32)  # the union of the four written subdomains
    everything = list(coalesce_events(_engine(events), interval=0.0))
    assert everything == events


def test_refresh_pacer_keeps_redraws_to_their_share_of_the_run():
    from napari_ddunet.plugin.live import LONGEST_REFRESH_S, REDRAW_SHARE, SHORTEST_REFRESH_S, RefreshPacer

    pacer = RefreshPacer()
    assert pacer.interval_s() == SHORTEST_REFRESH_S  # nothing measured yet
    pacer.record(0.005)  # a GPU canvas
    assert pacer.interval_s() == SHORTEST_REFRESH_S
    for cost in (0.1, 0.1, 0.1, 0.1):  # Mesa's software rasteriser on a big view
        pacer.record(cost)
    assert pacer.cost_s == 0.1 and pacer.interval_s() == 0.1 / REDRAW_SHARE
    pacer.record(3.0)  # one slow frame among fast ones moves the median, not the pace
    assert pacer.interval_s() == 0.1 / REDRAW_SHARE
    for _ in range(3):
        pacer.record(3.0)
    assert pacer.interval_s() == LONGEST_REFRESH_S  # never frozen for longer than this
