"""Exact, out-of-core, multi-device DDU-Net inference: the public entry points.

The subnetworks are independent; only the communication network couples subdomains, and a
communicated bottleneck pixel sees ``config.comm_halo`` bottleneck pixels on each side, so bands of
subdomain rows can be finished one after another with the monolithic result (docs/engine.md).
:func:`segment_iter` is the run as named stages:

1. :func:`~napari_ddunet.core.inference.request.build_request`: every argument checked, nothing computed;
2. :func:`~napari_ddunet.core.inference.schedule.plan_schedule`: the memory model picks an exact schedule;
3. :func:`~napari_ddunet.core.inference.store.open_sink`: the output store (or arrays) created or reopened;
4. :class:`~napari_ddunet.core.inference.scheduler.Scheduler`: read, encode, communicate, decode, write;
   for a stack (t/z axes, :mod:`~napari_ddunet.core.inference.stack`), :class:`StackRun` runs one per plane.

Progress follows :mod:`napari_ddunet.core.inference.progress`; :func:`segment` drives it to the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from napari_ddunet.core.inference.output_guard import claim_output
from napari_ddunet.core.inference.progress import Phase, ProgressEvent, drive
from napari_ddunet.core.inference.request import EngineError, SegmentRequest, build_request, parse_memory
from napari_ddunet.core.inference.schedule import SCHEDULES, SchedulePlan, plan_schedule
from napari_ddunet.core.inference.scheduler import Scheduler
from napari_ddunet.core.inference.sink import Sink
from napari_ddunet.core.inference.stack import name_leading_axes, plane_sink
from napari_ddunet.core.inference.store import open_sink

__all__ = ["SCHEDULES", "EngineError", "Phase", "ProgressEvent", "SegmentationResult", "parse_memory", "segment",
           "segment_iter"]


@dataclass
class SegmentationResult:
    labels: Any
    probabilities: Any | None
    bottleneck: Any | None
    communicated: Any | None
    grid: tuple[int, int]
    subdomain_size: tuple[int, int]
    schedule: str
    output: str | None
    cancelled: bool
    logits: Any | None = None


def segment_iter(
    image: Any,
    model: Any,
    *,
    subdomain_size: tuple[int, int] | None = None,
    devices: str | Sequence[str] = ("cpu",),
    output: str | Path | None = None,
    memory_budget: int | str | None = None,
    features: bool = False,
    probabilities: bool = False,
    logits: bool = False,
    channel_axis: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    communicate: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    cancel: threading.Event | None = None,
    dtype: torch.dtype = torch.float32,
    schedule: str | None = None,
    distributed: Any = None,
    channels: Sequence[int] | None = None,
    axes: str | None = None,
    planes: Sequence[int | Sequence[int]] | None = None,
    calibration: Any = None,
    normalization: str | None = None,
) -> Generator[ProgressEvent, None, SegmentationResult]:
    """Segment ``image`` with ``model``; yields :class:`ProgressEvent`, returns :class:`SegmentationResult`.

    See docs/engine.md. Beyond the contract: ``logits=True`` also keeps the raw logits
    (compute dtype), ``schedule`` forces one of :data:`SCHEDULES` instead of choosing by ``memory_budget``,
    ``distributed`` is a :class:`~napari_ddunet.core.inference.distributed.DistContext`
    (set by the CLI under torchrun), and ``channels`` picks the image's bands by index, in that order
    (read lazily, only those bands; see :func:`~napari_ddunet.core.io.images.choose_bands`).

    A stack (axes named t or z by the file, or ``axes="ZYX"``, ``"TCZYX"``... for an array) is segmented
    plane by plane; its outputs have the stack's leading axes in front (labels (T, Z, Y, X)), and
    ``planes`` (indices, a tuple each for two leading axes) limits the run to some of them.

    ``calibration`` (a :class:`~napari_ddunet.core.io.ome.Calibration`, or a dict of y/x ``scale``,
    ``translate`` and ``units`` as a napari layer has them) places the output in physical space; by default
    the input's own (OME-Zarr, OME-TIFF, ImageJ TIFF) is carried to the store's OME-Zarr metadata.

    ``normalization`` is ``"checkpoint"`` (default: the mode the checkpoint records), ``"percentile"`` or
    ``"dtype"`` (:mod:`napari_ddunet.core.io.normalization`); an input far from the training data's value range
    raises a :class:`~napari_ddunet.core.io.normalization.ValueRangeWarning` before any work.
    """
    request = build_request(
        image, model, subdomain_size=subdomain_size, devices=devices, output=output, memory_budget=memory_budget,
        features=features, probabilities=probabilities, logits=logits, channel_axis=channel_axis, region=region,
        communicate=communicate, resume=resume, overwrite=overwrite, dtype=dtype, schedule=schedule,
        distributed=distributed, channels=channels, axes=axes, planes=planes, calibration=calibration,
        normalization=normalization,
    )
    plan = plan_schedule(request)
    # the output store's lock (rank 0's under torchrun), held until the run ends; an overwrite clears the
    # old store here, after every check above
    with claim_output(request):
        sink = open_sink(request, plan)
        if request.stack is not None:
            name_leading_axes(sink, request.stack, request.calibration)
            scheduler: Scheduler | StackRun = StackRun(request, plan, sink, cancel)
        else:
            scheduler = Scheduler(request, plan, sink, cancel)
        message = _describe(request, plan)
        # a resumed store whose record promised more than it holds says so before the run starts
        first = f"{message}; {sink.note}" if sink.note else message
        yield ProgressEvent(Phase.PREPARE, scheduler.finished, scheduler.total, outputs=sink.outputs(), message=first,
                            warnings=request.warnings)
        cancelled = yield from scheduler.run()
        if request.world > 1:
            cancelled = request.distributed.any(cancelled)
        r0, r1, c0, c1 = request.rect
        if not cancelled and (request.world == 1 or request.distributed.rank == 0):
            sink.set_attr("complete", bool(sink.done_mask()[..., r0:r1, c0:c1].all()))
        final = Phase.CANCELLED if cancelled else Phase.DONE
        yield ProgressEvent(final, scheduler.finished, scheduler.total, message=message)
        outs = sink.outputs()
        return SegmentationResult(
            labels=outs["labels"], probabilities=outs.get("probabilities"), bottleneck=outs.get("bottleneck"),
            communicated=outs.get("communicated"), grid=request.plan.grid, subdomain_size=request.plan.subdomain,
            schedule=plan.name, output=None if request.output.path is None else str(request.output.path),
            cancelled=cancelled, logits=outs.get("logits"),
        )


def _describe(request: SegmentRequest, plan: SchedulePlan) -> str:
    """The first event's message: what runs where, and the memory it expects."""
    grid = request.plan
    message = (f"{request.model.config.notation} on a {grid.rows}x{grid.cols} grid of {grid.subdomain[0]}x"
               f"{grid.subdomain[1]} subdomains, schedule {plan.name} (estimated peak {plan.estimate / 1e6:.0f} MB "
               f"of a {request.budget / 1e6:.0f} MB budget), devices {', '.join(str(d) for d in request.devices)}")
    if request.source.note:
        message += f"; {request.source.note}"
    if request.stack is not None:
        stack = request.stack
        message += (f"; plane by plane: {len(request.planes)} of {' x '.join(map(str, stack.shape))} "
                    f"{''.join(stack.names).upper()} planes")
    if request.world > 1:
        mine = request.own_rows()
        message += (f"; rank {request.distributed.rank} of {request.world} owns grid rows "
                    f"{mine[0]}..{mine[1] - 1}")
    return message


class StackRun:
    """The planes of a stack through the 2D stages, one plane at a time.

    It has a :class:`Scheduler`'s interface (``finished``, ``total``, :meth:`run`) and runs one Scheduler per
    plane on that plane's request and a plane view of the store, so each plane is the 2D engine's run, bit
    for bit; its events count the subdomains of every plane, so done/total never goes back.
    """

    def __init__(self, request: SegmentRequest, schedule: SchedulePlan, sink: Sink,
                 cancel: threading.Event | None) -> None:
        self.req, self.schedule, self.sink, self.cancel = request, schedule, sink, cancel
        r0, r1, c0, c1 = request.rect
        own0, own1 = request.own_rows()
        done = sink.done_mask()
        self.total = (own1 - own0) * (c1 - c0) * len(request.planes)
        self.finished = int(sum(done[index][own0:own1, c0:c1].sum() for index in request.planes))
        # a finished plane is skipped; under torchrun every rank runs every plane (the halo swap is collective)
        self.todo = [index for index in request.planes if request.world > 1 or not done[index][r0:r1, c0:c1].all()]

    def run(self) -> Generator[ProgressEvent, None, bool]:
        """Every plane's stages in turn; returns True when cancelled."""
        for index in self.todo:
            if self.cancel is not None and self.cancel.is_set():
                return True
            plane = Scheduler(self.req.for_plane(index), self.schedule, plane_sink(self.sink, index), self.cancel)
            offset = self.finished - plane.finished
            label = self.req.stack.label(index)
            steps = plane.run()
            try:
                while True:
                    try:
                        event = next(steps)
                    except StopIteration as stop:
                        cancelled = stop.value
                        break
                    yield ProgressEvent(event.phase, offset + event.done, self.total, region=event.region,
                                        message=f"{label}: {event.message}" if event.message else label, plane=index)
            finally:
                steps.close()
            self.finished = offset + plane.finished
            if cancelled:
                return True
        return False


def segment(image: Any, model: Any, *, progress: Callable[[ProgressEvent], Any] | None = None,
            cancel: threading.Event | None = None, return_result: bool = False, **kwargs: Any) -> Any:
    """Run :func:`segment_iter` to the end; ``progress(event)`` sees every event. Returns the labels
    (or the whole :class:`SegmentationResult` with ``return_result=True``)."""
    result: SegmentationResult = drive(segment_iter(image, model, cancel=cancel, **kwargs), progress, cancel)
    return result if return_result else result.labels
