"""Exact, out-of-core, multi-device DDU-Net inference: the public entry points.

The subnetworks are independent; only the communication network couples subdomains, and a
communicated bottleneck pixel sees ``config.comm_halo`` bottleneck pixels on each side, so bands of
subdomain rows can be finished one after another with the monolithic result (docs/engine.md).
:func:`segment_iter` is the run as named stages:

1. :func:`~napari_ddunet.core.inference.request.build_request`: every argument checked, nothing computed;
2. :func:`~napari_ddunet.core.inference.schedule.plan_schedule`: the memory model picks an exact schedule;
3. :func:`~napari_ddunet.core.inference.store.open_sink`: the output store (or arrays) created or reopened;
4. :class:`~napari_ddunet.core.inference.scheduler.Scheduler`: read, encode, communicate, decode, write.

Progress follows :mod:`napari_ddunet.core.inference.progress`; :func:`segment` drives it to the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from napari_ddunet.core.inference.progress import Phase, ProgressEvent, drive
from napari_ddunet.core.inference.request import EngineError, SegmentRequest, build_request, parse_memory
from napari_ddunet.core.inference.schedule import SCHEDULES, SchedulePlan, plan_schedule
from napari_ddunet.core.inference.scheduler import Scheduler
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
) -> Generator[ProgressEvent, None, SegmentationResult]:
    """Segment ``image`` with ``model``; yields :class:`ProgressEvent`, returns :class:`SegmentationResult`.

    See docs/engine.md. Beyond the contract: ``logits=True`` also keeps the raw logits
    (compute dtype), ``schedule`` forces one of :data:`SCHEDULES` instead of choosing by ``memory_budget``,
    and ``distributed`` is a :class:`~napari_ddunet.core.inference.distributed.DistContext`
    (set by the CLI under torchrun).
    """
    request = build_request(
        image, model, subdomain_size=subdomain_size, devices=devices, output=output, memory_budget=memory_budget,
        features=features, probabilities=probabilities, logits=logits, channel_axis=channel_axis, region=region,
        communicate=communicate, resume=resume, overwrite=overwrite, dtype=dtype, schedule=schedule,
        distributed=distributed,
    )
    plan = plan_schedule(request)
    sink = open_sink(request, plan)
    scheduler = Scheduler(request, plan, sink, cancel)
    message = _describe(request, plan)
    yield ProgressEvent(Phase.PREPARE, scheduler.finished, scheduler.total, outputs=sink.outputs(), message=message)
    cancelled = yield from scheduler.run()
    if request.world > 1:
        cancelled = request.distributed.any(cancelled)
    r0, r1, c0, c1 = request.rect
    if not cancelled and (request.world == 1 or request.distributed.rank == 0):
        sink.set_attr("complete", bool(sink.done_mask()[r0:r1, c0:c1].all()))
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
    if request.world > 1:
        mine = request.own_rows()
        message += (f"; rank {request.distributed.rank} of {request.world} owns grid rows "
                    f"{mine[0]}..{mine[1] - 1}")
    return message


def segment(image: Any, model: Any, *, progress: Callable[[ProgressEvent], Any] | None = None,
            cancel: threading.Event | None = None, return_result: bool = False, **kwargs: Any) -> Any:
    """Run :func:`segment_iter` to the end; ``progress(event)`` sees every event. Returns the labels
    (or the whole :class:`SegmentationResult` with ``return_result=True``)."""
    result: SegmentationResult = drive(segment_iter(image, model, cancel=cancel, **kwargs), progress, cancel)
    return result if return_result else result.labels
