"""The progress protocol (one monotonic done/total of subdomains, a Phase enum) and the drive() helper."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
import torch
from engine_cases import SUB, image, tiny_model

from napari_ddunet.core.inference.engine import segment_iter
from napari_ddunet.core.inference.progress import Phase, ProgressEvent, drive
from napari_ddunet.core.inference.sink import open_output

GRID_TILES = 5 * 7


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def events_of(steps) -> tuple[list[ProgressEvent], object]:
    events: list[ProgressEvent] = []
    return events, drive(steps, events.append)


def assert_protocol(events: list[ProgressEvent], total: int, start: int = 0) -> None:
    assert all(isinstance(e.phase, Phase) for e in events)
    assert events[0].phase is Phase.PREPARE and events[0].done == start
    assert {e.total for e in events} == {total}
    done = [e.done for e in events]
    assert done == sorted(done) and all(0 <= d <= total for d in done)
    writes = [e.done for e in events if e.phase is Phase.WRITE]
    assert writes == list(range(start + 1, start + 1 + len(writes)))   # one write event per subdomain


@pytest.mark.parametrize(
    ("options", "schedule"),
    [({"schedule": "monolithic"}, "monolithic"), ({"schedule": "wavefront"}, "wavefront"),
     ({"schedule": "recompute", "devices": ("cpu", "cpu")}, "recompute"),
     ({"communicate": False, "devices": ("cpu", "cpu")}, "streaming")],
)
def test_every_schedule_counts_subdomains_monotonically(model, options, schedule):
    events, result = events_of(segment_iter(image(), model, subdomain_size=SUB, dtype=torch.float64, **options))
    assert result.schedule == schedule
    assert_protocol(events, GRID_TILES)
    assert events[-1].phase is Phase.DONE and events[-1].done == GRID_TILES
    assert len([e for e in events if e.phase is Phase.WRITE]) == GRID_TILES
    phases = {e.phase for e in events}
    assert (Phase.COMMUNICATE in phases) == (schedule != "streaming")


def test_region_total_is_the_region_subdomains(model):
    events, _ = events_of(segment_iter(image(), model, subdomain_size=SUB, region=(20, 40, 30, 60)))
    assert_protocol(events, 4)
    assert events[-1].done == 4


def test_cancel_and_resume_keep_one_count(model, tmp_path):
    out = tmp_path / "out.zarr"
    cancel = threading.Event()

    def stop_after_nine(event: ProgressEvent) -> None:
        if event.done >= 9:
            cancel.set()

    events: list[ProgressEvent] = []
    steps = segment_iter(image(), model, subdomain_size=SUB, schedule="wavefront", output=out, cancel=cancel)
    result = drive(steps, lambda e: (events.append(e), stop_after_nine(e)), cancel)
    assert result.cancelled and events[-1].phase is Phase.CANCELLED
    assert_protocol(events, GRID_TILES)
    stored = int(np.asarray(open_output(out)["done"][...]).sum())
    assert 9 <= events[-1].done == stored < GRID_TILES
    resumed, result = events_of(segment_iter(image(), model, subdomain_size=SUB, schedule="recompute", output=out,
                                             resume=True))
    assert not result.cancelled
    assert_protocol(resumed, GRID_TILES, start=stored)
    assert resumed[-1].done == GRID_TILES


def test_phase_is_a_str_enum_of_the_old_names():
    assert [p.value for p in Phase] == ["prepare", "encode", "communicate", "decode", "write", "done", "cancelled"]
    event = ProgressEvent("write", 1, 2)
    assert event.phase is Phase.WRITE and event.phase == "write" and f"{event.phase}" == "write"
    with pytest.raises(ValueError, match="not a valid Phase"):
        ProgressEvent("writing", 1, 2)


def _counting(n: int):
    for i in range(n):
        yield ProgressEvent(Phase.WRITE, i + 1, n)
    return "finished"


def test_drive_returns_the_result_and_shows_every_event():
    seen: list[int] = []
    assert drive(_counting(3), lambda e: seen.append(e.done)) == "finished"
    assert seen == [1, 2, 3]
    assert drive(_counting(2)) == "finished"


def test_drive_closes_the_generator_when_the_callback_fails():
    steps = _counting(5)

    def fail(event: ProgressEvent) -> None:
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        drive(steps, fail)
    assert inspect.getgeneratorstate(steps) == inspect.GEN_CLOSED


def test_drive_winds_the_engine_down_before_a_callback_error_propagates(model, tmp_path):
    """A failing callback (or Ctrl-C) cancels the run: done marks match the data and no worker thread is left."""
    out = tmp_path / "out.zarr"
    cancel = threading.Event()
    events: list[ProgressEvent] = []

    def fail_at_five(event: ProgressEvent) -> None:
        events.append(event)
        if event.done == 5:
            raise KeyboardInterrupt

    steps = segment_iter(image(), model, subdomain_size=SUB, dtype=torch.float64, schedule="recompute", output=out,
                         logits=True, cancel=cancel)
    with pytest.raises(KeyboardInterrupt):
        drive(steps, fail_at_five, cancel)
    assert cancel.is_set() and inspect.getgeneratorstate(steps) == inspect.GEN_CLOSED
    assert not [t for t in threading.enumerate() if t.name.startswith("ddunet-")]
    stored = open_output(out)
    done = np.asarray(stored["done"][...]).astype(bool)
    assert 5 <= done.sum() < GRID_TILES and stored["attrs"]["complete"] is False
    logits = np.asarray(stored["logits"][...])
    for r, c in zip(*np.nonzero(done), strict=True):
        assert logits[:, 16 * r:16 * r + 16, 24 * c:24 * c + 24].any()
