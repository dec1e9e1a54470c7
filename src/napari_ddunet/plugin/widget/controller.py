"""The run controller: one engine run at a time in a napari worker, its output policy and Cancel.

Plain Python around napari's ``thread_worker``: the engine's generator runs in the worker (the
stardist-napari contract) and its events come back on the GUI thread through :attr:`RunController.progressed`;
the result comes back through :attr:`RunController.returned`. :meth:`RunController.run_blocking` is the
same path, waited for, for scripts, ``napari-ddunet demo`` and the tests.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject

from napari_ddunet.plugin.live import coalesce_events
from napari_ddunet.plugin.worker_runs import WorkerController

logger = logging.getLogger(__name__)

#: Runs over more pixels than this write to a temporary zarr store instead of memory.
IN_MEMORY_PIXELS = 4096 * 4096


def temporary_store() -> str:
    """A zarr path in a new temporary folder that is removed when Python exits.

    Its Labels layer reads from it for as long as the viewer lives, so it cannot go earlier.
    """
    folder = tempfile.mkdtemp(prefix="napari-ddunet-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(Path(folder) / "labels.zarr")


def output_for(requested: str | None, run_yx: tuple[int, int]) -> str | None:
    """Where a run writes: the store asked for, else memory, else (over :data:`IN_MEMORY_PIXELS`) a temp store."""
    if requested:
        return requested
    return temporary_store() if run_yx[0] * run_yx[1] > IN_MEMORY_PIXELS else None


def _engine_events(image: Any, model: Any, **kwargs: Any):
    """The engine's generator with its progress events thinned out for the GUI.

    It runs at the GUI's priority: a niced worker made runs 1.4x slower under load without a more
    responsive GUI (docs/benchmarks.md, bench --gui).
    """
    from napari_ddunet.core.inference.engine import segment_iter

    return (yield from coalesce_events(segment_iter(image, model, **kwargs)))


@dataclass
class RunRequest:
    """Everything one run needs; ``kind`` is "main" or "compare" (communication switched off)."""

    image: Any
    model: Any
    image_yx: tuple[int, int]
    subdomain_size: tuple[int, int]
    devices: tuple[str, ...]
    channel_axis: int | None
    output: str | None = None
    channels: tuple[int, ...] | None = None  # the bands that feed the model, in order (None: all)
    features: bool = False
    region: tuple[int, int, int, int] | None = None
    memory_budget_mb: int = 0
    kind: str = "main"
    cancel: threading.Event = field(default_factory=threading.Event)
    calibration: Any = None  # the image layer's y/x scale, translate and units, for the store's OME metadata
    axes: str | None = None  # a stack's axes ("ZYX", "TCZYX"): its t/z planes are segmented one by one
    planes: tuple[tuple[int, ...], ...] | None = None  # the stack's planes to segment (None: all)
    plane_count: int = 1     # planes the labels hold (a stack's), for where they can live
    normalization: str | None = None  # "checkpoint" (None), "percentile" or "dtype" (core/io/normalization)

    def run_yx(self) -> tuple[int, int]:
        """Pixels the run covers: the region's, or the whole image's."""
        if self.region is None:
            return self.image_yx
        y0, y1, x0, x1 = self.region
        return y1 - y0, x1 - x0

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "subdomain_size": self.subdomain_size,
            "devices": self.devices,
            "output": self.output,
            "features": self.features,
            "channel_axis": self.channel_axis,
            "channels": self.channels,
            "region": self.region,
            "cancel": self.cancel,
            "calibration": self.calibration,
            "axes": self.axes,
            "planes": self.planes,
            "normalization": self.normalization,
        }
        if self.kind == "compare":
            kwargs["communicate"] = False
        if self.memory_budget_mb > 0:
            kwargs["memory_budget"] = self.memory_budget_mb * 2**20
        return kwargs


class RunController(WorkerController):
    """Owns the worker of the run in flight, where it writes, and Cancel.

    ``result`` is the last main run's result (a comparison run leaves it as it is), ``last_result`` any run's.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.result = None
        #: the run's warnings (a value range far from the training data's, found before any work), each also
        #: shown as a warning notification
        self.warnings: list[str] = []

    def _make_worker(self, request: RunRequest) -> Any:
        from napari.qt.threading import create_worker

        height, width = request.run_yx()
        request.output = output_for(request.output, (height * request.plane_count, width))
        self.warnings = []
        if request.kind == "main":
            self.result = None
        return create_worker(
            _engine_events, request.image, request.model, _start_thread=False, _ignore_errors=True,
            **request.engine_kwargs(),
        )

    def _stop(self) -> None:
        """The engine stops at its next batch and returns a result marked cancelled."""
        self.request.cancel.set()

    @property
    def cancelling(self) -> bool:
        return self.worker is not None and self.request is not None and self.request.cancel.is_set()

    def _on_event(self, request: RunRequest, event: Any) -> None:
        """Each value-range warning of the run (they come on its first event) is kept and shown as a napari
        warning notification, on every run, before the event goes on to :attr:`progressed`."""
        if event.warnings:
            from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

            for line in event.warnings:
                self.warnings.append(line)
                notification_manager.dispatch(Notification(line, severity=NotificationSeverity.WARNING))
        super()._on_event(request, event)

    def _on_returned(self, request: RunRequest, result: Any) -> None:
        if request.kind == "main":
            self.result = result
        super()._on_returned(request, result)
