"""The memory model of one subdomain and the choice of an exact schedule for a memory budget.

Schedules (all exact; see docs/engine.md):

- ``monolithic``: the whole grid in one batch (small images).
- ``wavefront``: encode rows top to bottom, hold the skip features of only the rows still waiting for
  their neighbours (k + 2 rows), decode each row as soon as its window is complete.
- ``recompute``: hold only F-channel bottlenecks of 2k + 1 rows; re-encode each subdomain to decode it
  (twice the encoder cost, the least memory).
- ``streaming``: no exchange (F = 0, C = N, or ``communicate=False``): every subdomain independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from napari_ddunet.core.network.model import DDUNet

if TYPE_CHECKING:
    from napari_ddunet.core.inference.request import SegmentRequest

SCHEDULES = ("monolithic", "wavefront", "recompute", "streaming")
#: Budget used when none is given: enough for whole small images, bounded for large ones.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3


@dataclass(frozen=True)
class MemoryModel:
    """Byte estimates for one subdomain, from the real layer shapes (the encoder run on one 2**D square)."""

    skips: int      # all encoder features of one subdomain (what the wavefront holds)
    work: int       # transient peak of encoding + decoding one subdomain
    sent: int       # its F-channel bottleneck

    @classmethod
    def of(cls, model: DDUNet, subdomain: tuple[int, int], itemsize: int) -> MemoryModel:
        config = model.config
        step = config.downsampling
        parameter = next(model.parameters())
        probe = torch.zeros(1, config.in_channels, step, step, dtype=parameter.dtype, device=parameter.device)
        training = model.training
        model.eval()   # a probe in training mode would update BatchNorm statistics
        try:
            with torch.inference_mode():
                shapes = [f.shape for f in model.encode(probe)]
        finally:
            model.train(training)
        h, w = subdomain
        # a level at 1/s of the probe's resolution is at 1/s of the subdomain's too
        sizes = [s[1] * (h * s[2] // step) * (w * s[3] // step) for s in shapes]
        skips = sum(sizes) * itemsize
        work = (8 * max(sizes) + (config.in_channels + 3 * config.num_classes) * h * w) * itemsize
        sent = config.comm_features * (h // step) * (w // step) * itemsize
        return cls(skips, work, sent)


def choose_schedule(mem: MemoryModel, tiles: int, cols: int, halo_rows: int, exchange: bool, devices: int,
                    budget: int) -> tuple[str, int, int]:
    """(schedule, subdomains per job, estimated peak bytes) for a memory budget.

    Monolithic when the whole grid fits (and there is one device); else the wavefront when the skips of
    k + 2 subdomain rows fit beside one job per device; else recompute, whose peak does not depend on
    the image height and only through the 2k + 1 bottleneck rows on its width.
    """
    per_tile = mem.skips + mem.work
    band = (2 * halo_rows + 1) * cols * mem.sent * 3
    mono = tiles * per_tile + band
    if devices == 1 and mono <= budget:
        return "monolithic", tiles, mono

    def fit(free: int, each: int) -> int:
        return max(1, min(cols, free // max(1, devices * each)))

    if not exchange:
        batch = fit(budget, per_tile)
        return "streaming", batch, devices * batch * per_tile
    held = (halo_rows + 2) * cols * mem.skips
    rest = budget - held - band
    if rest >= devices * mem.work:
        batch = fit(rest, mem.work)
        return "wavefront", batch, held + band + devices * batch * mem.work
    batch = fit(budget - band, per_tile)
    return "recompute", batch, band + devices * batch * per_tile


@dataclass(frozen=True)
class SchedulePlan:
    """The schedule a run uses, its subdomains per device job and the estimated peak memory."""

    name: str
    batch: int
    estimate: int


def plan_schedule(request: SegmentRequest) -> SchedulePlan:
    """The budget's choice, then the forced schedule, the torchrun rule and the per-device batch size."""
    r0, r1, c0, c1 = request.rect
    cols = c1 - c0
    itemsize = torch.empty((), dtype=request.dtype).element_size()
    mem = MemoryModel.of(request.model, request.plan.subdomain, itemsize)
    chosen, batch, estimate = choose_schedule(mem, (r1 - r0) * cols, cols, request.halo_rows, request.exchange,
                                              len(request.devices), request.budget)
    forced = request.schedule
    if forced is not None:
        chosen = forced if request.exchange or forced == "monolithic" else "streaming"
        batch = max(1, min(batch, cols))
    if request.world > 1 and chosen in ("monolithic", "wavefront"):
        # each rank encodes all its rows before the halo exchange, so the wavefront holds a rank's whole band
        band_rows = math.ceil((r1 - r0) / request.world)
        fits = band_rows * cols * mem.skips + len(request.devices) * batch * mem.work <= request.budget
        chosen = ("wavefront" if fits or forced == "wavefront" else "recompute") if request.exchange else "streaming"
        batch = max(1, min(batch, cols))
    if chosen == "monolithic":
        batch = (r1 - r0) * cols
    elif all(d.type == "cpu" for d in request.devices):
        batch = 1   # one subdomain per job runs fastest on a CPU: it stays in cache (docs/benchmarks.md)
    return SchedulePlan(chosen, batch, estimate)
