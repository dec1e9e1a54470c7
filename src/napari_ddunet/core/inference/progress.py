"""The engine's progress protocol and the one loop that drives its generator.

:func:`~napari_ddunet.core.inference.engine.segment_iter` yields a :class:`ProgressEvent` after every
stage step and returns a ``SegmentationResult``. Every event carries the same count:

- ``phase``: the :class:`Phase` that just advanced (a ``StrEnum``, so ``event.phase == "write"`` works);
- ``done``: subdomains of this run that are finished on the output (computed, written, marked done),
  including those a resumed run found finished; it never decreases from one event to the next;
- ``total``: subdomains of this run (of this rank under torchrun); the same on every event.

The first event is ``prepare`` (it carries ``outputs``, the arrays being filled), the last one ``done``
or ``cancelled``. A ``write`` event carries the image ``region`` (y0, y1, x0, x1) it just wrote, so a
viewer can refresh only that part; for a stack, ``plane`` names the plane (its indices along the
leading t/z axes), and ``done/total`` count the subdomains of every plane of the run. ``message`` is free
text for people.

Consumers call :func:`drive` instead of writing their own ``next()`` loop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

Result = TypeVar("Result")


class Phase(StrEnum):
    """The stage an event reports; the values are the phase names of earlier releases."""

    PREPARE = "prepare"
    ENCODE = "encode"
    COMMUNICATE = "communicate"
    DECODE = "decode"
    WRITE = "write"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run; ``done/total`` counts finished subdomains (see the module docstring)."""

    phase: Phase
    done: int
    total: int
    outputs: Mapping[str, Any] | None = None
    region: tuple[int, int, int, int] | None = None
    message: str = ""
    plane: tuple[int, ...] | None = None   # a stack's plane (its leading indices) the event is about
    warnings: tuple[str, ...] = ()         # on the first event: the run's value-range warnings (one line each)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", Phase(self.phase))   # a plain string becomes its Phase (or raises)


def drive(events: Generator[ProgressEvent, None, Result], progress: Callable[[ProgressEvent], Any] | None = None,
          cancel: threading.Event | None = None) -> Result:
    """Run an engine generator to its end, calling ``progress(event)`` on every event; returns its result.

    ``cancel`` is the event the generator was built with (setting it, from ``progress`` or another thread,
    makes the engine stop after the band in flight and return a cancelled result). When ``progress`` raises
    (a failing callback, Ctrl-C), ``cancel`` is set and the generator drained first, so its output store is
    left consistent and its worker threads end; without ``cancel`` the generator is closed. Then the error
    propagates.
    """
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(event)
    except BaseException:
        if cancel is not None:
            cancel.set()
            with contextlib.suppress(Exception):   # the first error is the one to report
                for _ in events:
                    pass
        events.close()
        raise
