"""The memory model of one run and the choice of an exact schedule that fits a memory budget.

Schedules (all exact; see docs/engine.md):

- ``monolithic``: the whole grid in one batch (small images).
- ``wavefront``: encode rows top to bottom, hold the skip features of only the rows still waiting for
  their neighbours (k + 2 rows), decode each row as soon as its window is complete.
- ``recompute``: hold only F-channel bottlenecks of 2k + 2 rows; re-encode each subdomain to decode it
  (twice the encoder cost, the least memory).
- ``streaming``: no exchange (F = 0, C = N, or ``communicate=False``): every subdomain independent.

The budget is a bound on what the run holds, not a hint: besides the schedule's own rows, it caps the
subdomains in flight between reading and the main thread (``inflight``: read ahead, waiting for or on a
device, finished but not yet taken) and the decoded subdomains waiting for the writer (``writes``), and it
sets how many columns the communication network sees at once (``comm_cols``). A budget that not even one
subdomain at a time fits is refused, naming the smallest one that works.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.network.model import DDUNet

if TYPE_CHECKING:
    from napari_ddunet.core.inference.request import SegmentRequest

SCHEDULES = ("monolithic", "wavefront", "recompute", "streaming")
#: Budget used when none is given: enough for whole small images, bounded for large ones.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
#: Most columns the communication network runs on at once (more only costs memory: its cost is per pixel).
COMM_COLS = 16
#: What the run's threads cost whatever the image: torch's kernels set up on the device thread and its OpenMP
#: team, the zarr codecs of the readers and writers, their allocator arenas (bench --budget: 40-50 MB in a
#: fresh process on CPU, docs/benchmarks.md "Memory budget").
RUNTIME = 48 * 1000**2
#: Most subdomains read ahead per device job slot, and most waiting for the writer per writer thread.
READ_AHEAD = 3
WRITE_AHEAD = 2


class BudgetError(DDUNetError):
    """A memory budget that no schedule fits."""


@dataclass(frozen=True)
class MemoryModel:
    """Byte estimates for one subdomain, from the real layer shapes (the encoder run on one 2**D square)."""

    skips: int       # all encoder features of one subdomain (what the wavefront holds)
    work: int        # transient peak of encoding + decoding one subdomain on its device
    sent: int        # its F-channel bottleneck
    tile: int = 0    # reading it: the normalised float64 pixels and their copy in the compute precision
    result: int = 0  # its decoded outputs on the way to the writer (labels, probabilities, logits, features)

    @classmethod
    def of(cls, model: DDUNet, subdomain: tuple[int, int], itemsize: int, *, probabilities: bool = False,
           logits: bool = False, features: bool = False) -> MemoryModel:
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
        classes = config.num_classes
        work = (8 * max(sizes) + (config.in_channels + 3 * classes) * h * w) * itemsize
        sent = config.comm_features * (h // step) * (w // step) * itemsize
        tile = config.in_channels * h * w * (8 + itemsize)
        per_pixel = (1 if classes <= 256 else 4) + (4 * classes if probabilities else 0) \
            + (itemsize * classes if logits else 0)
        result = h * w * per_pixel + (2 * sent if features else 0)
        return cls(skips, work, sent, tile, result)


@dataclass(frozen=True)
class Layout:
    """The run's shape as the memory model sees it."""

    rows: int            # grid rows of the run
    cols: int            # grid columns of the run (every window spans all of them)
    halo_rows: int       # k: subdomain rows a communicated pixel sees above and below
    halo_cols: int       # the same in columns
    exchange: bool       # subdomains exchange bottlenecks (the communication network couples them)
    devices: int
    rank_rows: int = 0   # under torchrun: the rows of the largest rank, encoded whole before the halo exchange

    @property
    def tiles(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class SchedulePlan:
    """The schedule a run uses, its queue bounds and the peak memory they add up to.

    ``inflight``: most subdomains between reading and the main thread; ``writes``: most subdomains whose
    results wait for the writer; ``comm_cols``: columns per run of the communication network.
    """

    name: str
    batch: int
    estimate: int
    inflight: int = 1
    writes: int = 1
    comm_cols: int = COMM_COLS
    halo_cols: int = 0


def footprint(mem: MemoryModel, lay: Layout, name: str, batch: int, inflight: int, writes: int,
              comm_cols: int) -> int:
    """Peak bytes of schedule ``name`` with these queue bounds: what the scheduler can hold at once.

    Exchange keeps the bottlenecks of the communication window (2k + 1 rows, all of them for monolithic),
    the look-ahead row and the communicated rows of the band being decoded and the one before, plus the
    communication network's input, two intermediates and output on ``comm_cols`` columns and their halo;
    every schedule pays the :data:`RUNTIME` of its threads.
    """
    k = lay.halo_rows
    band = RUNTIME
    if lay.exchange:
        window = lay.rows if name == "monolithic" else min(lay.rows, 2 * k + 1)
        kept = min(lay.rows, lay.rank_rows + 2 * k) if lay.rank_rows else window
        seen = min(lay.cols, comm_cols + 2 * lay.halo_cols)
        band += (kept + 3) * lay.cols * mem.sent + 4 * window * seen * mem.sent
    if name == "monolithic":
        return band + lay.tiles * (mem.tile + mem.skips + mem.work + mem.result)
    keep = name == "wavefront"
    held = (lay.rank_rows or k + 2) * lay.cols * mem.skips if keep else 0
    slot = mem.tile + max(mem.skips if keep else mem.sent, mem.result)
    return band + held + lay.devices * batch * mem.work + inflight * slot + writes * mem.result


def _minimum(mem: MemoryModel, lay: Layout, name: str) -> int:
    return footprint(mem, lay, name, 1, 1, 1, 1)


def fit_pipeline(mem: MemoryModel, lay: Layout, name: str, budget: int, cpu: bool) -> SchedulePlan | None:
    """The largest queue bounds of schedule ``name`` within ``budget`` (None when even the least does not fit).

    Batch first (one subdomain per job on a CPU, where that runs fastest: docs/benchmarks.md), then the
    communication columns, then read-ahead and write-behind, each up to where more stops helping.
    """
    if name == "monolithic":
        comm_cols = min(lay.cols, COMM_COLS)
        estimate = footprint(mem, lay, name, lay.tiles, lay.tiles, lay.cols, comm_cols)
        return SchedulePlan(name, lay.tiles, estimate, lay.tiles, lay.cols, comm_cols, lay.halo_cols) \
            if estimate <= budget else None

    def cost(batch: int, inflight: int, writes: int, comm_cols: int) -> int:
        return footprint(mem, lay, name, batch, inflight, writes, comm_cols)

    if cost(1, 1, 1, 1) > budget:
        return None
    batch = 1
    if not cpu:
        ahead = 2 * lay.devices
        batch = max([b for b in _candidates(lay.cols) if cost(b, ahead * b, b, 1) <= budget], default=1)
    comm_cols = max(c for c in _candidates(min(lay.cols, COMM_COLS)) if cost(batch, batch, batch, c) <= budget)
    base = cost(batch, batch, batch, comm_cols)
    slot = cost(batch, batch + 1, batch, comm_cols) - base
    inflight = min(READ_AHEAD * lay.devices * batch + 2, batch + (budget - base) // max(1, slot))
    base = cost(batch, inflight, batch, comm_cols)
    writes = min(WRITE_AHEAD * 4 * batch, batch + (budget - base) // max(1, mem.result))
    return SchedulePlan(name, batch, cost(batch, inflight, writes, comm_cols), inflight, writes, comm_cols,
                        lay.halo_cols)


def _candidates(top: int) -> list[int]:
    """1, 2, 4, ... up to ``top`` and ``top`` itself: few sizes to try, whatever the grid's width."""
    sizes = {top}
    size = 1
    while size < top:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def choose_schedule(mem: MemoryModel, lay: Layout, budget: int, cpu: bool, forced: str | None = None) -> SchedulePlan:
    """The schedule for a memory budget, with its queue bounds; raise :class:`BudgetError` if none fits.

    Monolithic when the whole grid fits (and there is one device); else the wavefront when the skips of
    k + 2 subdomain rows fit beside the pipeline; else recompute, whose peak does not depend on the image
    height and only through the bottleneck rows on its width. ``forced`` takes that schedule or refuses.
    """
    if lay.rank_rows:   # torchrun: no monolithic, since every rank runs its own band
        names = ["streaming"] if not lay.exchange else [forced] if forced in ("wavefront", "recompute") \
            else ["wavefront", "recompute"]
    elif forced is not None:
        names = [forced]
    elif not lay.exchange:
        names = ["monolithic", "streaming"] if lay.devices == 1 else ["streaming"]
    else:
        names = ["monolithic", "wavefront", "recompute"] if lay.devices == 1 else ["wavefront", "recompute"]
    for name in names:
        plan = fit_pipeline(mem, lay, name, budget, cpu)
        if plan is not None:
            return plan
    least = min(_minimum(mem, lay, name) for name in names)
    which = f"schedule {forced}" if forced is not None else "this image"
    raise BudgetError(f"a memory budget of {_mb(budget)} is too small: {which} with this model and subdomain "
                      f"size needs at least {_mb(least, up=True)}; pass --memory-budget {_mb(least, up=True)} or "
                      "more, or use smaller subdomains")


def _mb(size: int, up: bool = False) -> str:
    """Bytes in decimal MB as a budget string (0.1 MB steps below 10 MB); ``up`` rounds up, so it is enough."""
    value = size / 1e6
    if value >= 10:
        return f"{math.ceil(value) if up else round(value)}MB"
    tenths = math.ceil(value * 10) if up else round(value * 10)
    return f"{tenths / 10:.1f}MB"


def plan_schedule(request: SegmentRequest) -> SchedulePlan:
    """The budget's choice (or the forced schedule, if it fits), under the torchrun rule."""
    r0, r1, c0, c1 = request.rect
    plan = request.plan
    itemsize = torch.empty((), dtype=request.dtype).element_size()
    policy = request.output
    mem = MemoryModel.of(request.model, plan.subdomain, itemsize, probabilities=policy.probabilities,
                         logits=policy.logits, features=policy.features)
    config = request.model.config
    halo = config.comm_layers * (config.comm_kernel // 2) * config.comm_dilation if request.exchange else 0
    lay = Layout(r1 - r0, c1 - c0, request.halo_rows, math.ceil(halo / plan.bottleneck_tile[1]), request.exchange,
                 len(request.devices))
    cpu = all(d.type == "cpu" for d in request.devices)
    forced = request.schedule
    if forced is not None and not request.exchange and forced != "monolithic":
        forced = "streaming"
    if request.world > 1:
        lay = dataclasses.replace(lay, rank_rows=math.ceil((r1 - r0) / request.world))
    return choose_schedule(mem, lay, request.budget, cpu, forced)
