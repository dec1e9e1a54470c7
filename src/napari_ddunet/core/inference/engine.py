"""Exact, out-of-core, multi-device DDU-Net inference.

The subnetworks are independent; only the communication network couples subdomains, and a
communicated bottleneck pixel sees ``config.comm_halo`` bottleneck pixels on each side. A band of
subdomain rows can therefore be finished once the ``k = ceil(halo / hb)`` rows below it are encoded:
the communication network runs on a window of bottleneck rows ``[a - k, b + k)`` (all columns) and is
cropped to ``[a, b)``. Its zero "same" padding then only matters at the true mosaic border, which the
window shares, so the result equals the monolithic forward. Schedules (all exact; see docs/engine.md):

- ``monolithic``: the whole grid in one batch (small images).
- ``wavefront``: encode rows top to bottom, hold the skip features of only the rows still waiting for
  their neighbours (k + 2 rows), decode each row as soon as its window is complete.
- ``recompute``: hold only F-channel bottlenecks of 2k + 1 rows; re-encode each subdomain to decode it
  (twice the encoder cost, the least memory).
- ``streaming``: no exchange (F = 0, C = N, or ``communicate=False``): every subdomain independent.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.devices import DeviceWorkers, resolve_devices, to_device
from napari_ddunet.core.inference.grid import PAD_MODE, GridPlan, plan_grid
from napari_ddunet.core.inference.sink import STORE_VERSION, Sink, check_output_location
from napari_ddunet.core.io.images import ImageSource, InputError, check_finite, open_image
from napari_ddunet.core.network.model import DDUNet

SCHEDULES = ("monolithic", "wavefront", "recompute", "streaming")
#: Writer threads: every chunk has one subdomain, so writes of different subdomains never collide.
WRITERS = 4
#: Budget used when none is given: enough for whole small images, bounded for large ones.
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


class EngineError(DDUNetError):
    """A segmentation request that cannot run as given."""


@dataclass(frozen=True)
class ProgressEvent:
    phase: str
    done: int
    total: int
    outputs: Mapping[str, Any] | None = None
    region: tuple[int, int, int, int] | None = None
    message: str = ""


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


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from 2e9, "2GB", "1.5 GiB", "512MB" (decimal units; KiB/MiB/GiB binary)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise EngineError(f"cannot read memory budget {value!r}; use e.g. 2GB, 512MiB or a number of bytes")
        number, unit = float(match.group(1)), match.group(2).lower()
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise EngineError(f"memory budget must be positive, got {value!r}")
    return result


def _resolve_model(model: Any) -> DDUNet:
    if isinstance(model, DDUNet):
        return model
    if isinstance(model, str | Path):
        from napari_ddunet.core.checkpoints.format import load_checkpoint

        return load_checkpoint(model, "cpu")
    raise EngineError(f"model must be a DDUNet or a checkpoint path, got {type(model).__name__}")


def _refuse_input_inside(image: Any, output: Path) -> None:
    """An output that is, or contains, the input file or store would be deleted by overwrite: refuse it."""
    where = image if isinstance(image, str | Path) else getattr(getattr(image, "store", None), "root", None)
    if where is None:
        return
    source, target = Path(where).resolve(), output.resolve()
    if source == target or target in source.parents:
        raise EngineError(f"output {output} is (or contains) the input {where}; choose another output")


def _weights_digest(model: DDUNet) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


class _Run:
    """The state of one segmentation run (built and validated by :func:`segment_iter`)."""

    def __init__(self, model: DDUNet, source: ImageSource, plan: GridPlan, rect: tuple[int, int, int, int],
                 sink: Sink, devices: list[torch.device], dtype: torch.dtype, schedule: str, batch: int,
                 exchange: bool, per_tile_comm: bool, halo_rows: int, mean: np.ndarray | None,
                 std: np.ndarray | None, probabilities: bool, logits: bool, features: bool,
                 cancel: threading.Event | None, resume: bool, dist: Any = None) -> None:
        self.model, self.source, self.plan, self.rect, self.sink = model, source, plan, rect, sink
        self.devices, self.dtype, self.schedule, self.batch = devices, dtype, schedule, batch
        self.exchange, self.per_tile_comm, self.k = exchange, per_tile_comm, halo_rows
        self.mean, self.std = mean, std
        self.want_probs, self.want_logits, self.want_features = probabilities, logits, features
        self.cancel, self.resume, self.dist = cancel, resume, dist
        self.f = model.config.comm_features if model.comm is not None else 0
        self.cols = list(range(rect[2], rect[3]))
        self.done = sink.done_mask() if resume else np.zeros(plan.grid, dtype=bool)
        self.stored = sink.encoded_mask() if resume else np.zeros(plan.grid, dtype=bool)
        if resume and self.f == 0:
            self.stored[:] = False
        self.bott: dict[tuple[int, int], torch.Tensor] = {}
        self.held: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.encoding: dict[int, list[tuple[list[int], Future]]] = {}
        self.comm = None
        if exchange:
            self.comm = copy.deepcopy(model.comm).to(device=devices[0], dtype=dtype).eval()

    # -- reading -------------------------------------------------------------------------------

    def read_tiles(self, row: int, cols: Sequence[int]) -> np.ndarray:
        """Normalised (n, C, h, w) inputs of subdomains (row, c) for c in cols, in the compute precision.

        Each run of adjacent columns is one read, so storage chunks shared by neighbours decode once.
        """
        w = self.plan.subdomain[1]
        tiles = []
        for c0 in [c for i, c in enumerate(cols) if i == 0 or cols[i - 1] != c - 1]:
            n = 1
            while c0 + n in cols:
                n += 1
            y0, y1, x0, _ = self.plan.tile_box(row, c0)
            block = self.source.read(y0, y1, x0, x0 + n * w)
            tiles += [block[:, :, i * w:(i + 1) * w] for i in range(n)]
        batch = np.stack(tiles)
        if self.mean is not None:
            batch = (batch - self.mean[:, None, None]) / self.std[:, None, None]
        # cast on the reader thread, so a float32 run moves half the bytes to the device
        return batch.astype(np.float64 if self.dtype == torch.float64 else np.float32, copy=False)

    def read_rows(self, r0: int, r1: int, cols: Sequence[int]) -> np.ndarray:
        return np.concatenate([self.read_tiles(r, cols) for r in range(r0, r1)])


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


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

    See docs/engine.md and ENGINE_API.md. Beyond the contract: ``logits=True`` also keeps the raw logits
    (compute dtype), ``schedule`` forces one of :data:`SCHEDULES` instead of choosing by ``memory_budget``,
    and ``distributed`` is a :class:`~napari_ddunet.core.inference.distributed.DistContext`
    (set by the CLI under torchrun).
    """
    net = _resolve_model(model)
    config = net.config
    info = getattr(net, "info", None)
    device_list = resolve_devices(devices)
    if schedule is not None and schedule not in SCHEDULES:
        raise EngineError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    budget = parse_memory(memory_budget) or DEFAULT_MEMORY_BUDGET
    source = open_image(image, in_channels=config.in_channels, channel_axis=channel_axis)
    if subdomain_size is None:
        subdomain_size = info.subdomain_size if info is not None and info.subdomain_size else None
    if subdomain_size is None:
        step = config.downsampling
        subdomain_size = tuple(max(step, min(256, side) // step * step) for side in source.shape)
    plan = plan_grid(source.shape, subdomain_size, config.downsampling)
    rect = plan.tiles_in_region(region)
    norm = info.normalization if info is not None else None
    mean = std = None
    if norm is not None:
        if len(norm.mean) != source.channels:
            raise InputError(f"checkpoint normalisation has {len(norm.mean)} channels, the image {source.channels}")
        mean, std = np.asarray(norm.mean, dtype=np.float64), np.asarray(norm.std, dtype=np.float64)
    path = None
    if output is not None:
        path = check_output_location(output, overwrite=overwrite, resume=resume)
        _refuse_input_inside(image, path)
    elif distributed is not None and distributed.world > 1:
        raise EngineError("a distributed run needs an output store that every rank can write")
    r0, r1, c0, c1 = rect
    top, _, left, _ = plan.cropped_box(r0, c0)
    _, bottom, _, right = plan.cropped_box(r1 - 1, c1 - 1)
    check_finite(source, (top, bottom, left, right))

    has_comm = net.comm is not None
    exchange = has_comm and (config.communicate if communicate is None else bool(communicate))
    per_tile_comm = has_comm and not exchange
    hb = plan.bottleneck_tile[0]
    halo = config.comm_layers * (config.comm_kernel // 2) * config.comm_dilation if exchange else 0
    halo_rows = math.ceil(halo / hb) if exchange else 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    mem = MemoryModel.of(net, plan.subdomain, itemsize)
    chosen, batch, estimate = choose_schedule(mem, (r1 - r0) * (c1 - c0), c1 - c0, halo_rows, exchange,
                                              len(device_list), budget)
    if schedule is not None:
        if schedule == "streaming" and exchange:
            raise EngineError("the streaming schedule needs a model without exchange (F=0, C=N or communicate=False)")
        chosen = schedule if exchange or schedule == "monolithic" else "streaming"
        batch = max(1, min(batch, c1 - c0))
    if distributed is not None and distributed.world > 1 and chosen in ("monolithic", "wavefront"):
        # each rank encodes all its rows before the halo exchange, so the wavefront holds a rank's whole band
        band_rows = math.ceil((r1 - r0) / distributed.world)
        fits = band_rows * (c1 - c0) * mem.skips + len(device_list) * batch * mem.work <= budget
        chosen = ("wavefront" if fits or schedule == "wavefront" else "recompute") if exchange else "streaming"
        batch = max(1, min(batch, c1 - c0))
    if chosen == "monolithic":
        batch = (r1 - r0) * (c1 - c0)
    elif all(d.type == "cpu" for d in device_list):
        batch = 1   # one subdomain per job runs fastest on a CPU: it stays in cache (docs/benchmarks.md)

    outputs = sorted(n for n, on in (("probabilities", probabilities), ("logits", logits),
                                     ("features", features and has_comm)) if on)
    names = list(info.class_names) if info is not None else list(config.class_names)
    colors = [list(c) for c in info.class_colors] if info is not None else None
    meta = {
        "store_version": STORE_VERSION,
        "notation": config.notation,
        "config": config.to_dict(),
        "weights": _weights_digest(net),
        "image_shape": list(plan.image_shape),
        "subdomain_size": list(plan.subdomain),
        "grid": list(plan.grid),
        "region": list(rect),
        "communicate": "exchange" if exchange else ("per-subdomain" if per_tile_comm else "none"),
        "dtype": str(dtype).replace("torch.", ""),
        "normalization": None if norm is None else norm.to_dict(),
        "pad_mode": PAD_MODE,
        "outputs": outputs,
        "schedule": chosen,
        "class_names": names,
        "class_colors": colors,
        "complete": False,
    }
    np_dtype = _host(torch.empty((), dtype=dtype)).dtype
    def make_sink(reopen: bool) -> Sink:
        return Sink(plan, path=path, num_classes=config.num_classes, comm_features=config.comm_features,
                    compute_dtype=np_dtype, probabilities=probabilities, features=features, logits=logits,
                    meta=meta, colors=colors, resume=reopen)

    attach = distributed is not None and distributed.world > 1 and distributed.rank != 0
    if distributed is not None and distributed.world > 1:
        # every rank has validated the request (an existing output included) before rank 0 creates the store;
        # rank 0 creates (or reopens) it, the others open it once it exists, or all fail together
        distributed.barrier()
        error: DDUNetError | None = None
        if distributed.rank == 0:
            try:
                sink = make_sink(resume)
            except DDUNetError as failure:
                error = failure
        if distributed.any(error is not None):
            raise error or EngineError("rank 0 could not prepare the output store; see its message")
        if attach:
            sink = make_sink(True)
    else:
        sink = make_sink(resume)
    if not attach:
        sink.set_attr("schedule", chosen)
    message = (f"{config.notation} on a {plan.rows}x{plan.cols} grid of {plan.subdomain[0]}x{plan.subdomain[1]} "
               f"subdomains, schedule {chosen} (estimated peak {estimate / 1e6:.0f} MB of a "
               f"{budget / 1e6:.0f} MB budget), devices {', '.join(str(d) for d in device_list)}")
    mine = (r0, r1)
    if distributed is not None and distributed.world > 1:
        mine = distributed.own_rows(r0, r1, halo_rows)
        message += f"; rank {distributed.rank} of {distributed.world} owns grid rows {mine[0]}..{mine[1] - 1}"
    total_tiles = (mine[1] - mine[0]) * (c1 - c0)
    finished = int(sink.done_mask()[mine[0]:mine[1], c0:c1].sum()) if resume else 0
    yield ProgressEvent("prepare", finished, total_tiles, outputs=sink.outputs(), message=message)

    run = _Run(net, source, plan, rect, sink, device_list, dtype, chosen, batch, exchange, per_tile_comm,
               halo_rows, mean, std, probabilities, logits, features, cancel, resume, distributed)
    cancelled = yield from _execute(run)
    if distributed is not None and distributed.world > 1:
        cancelled = distributed.any(cancelled)
    if not cancelled and (distributed is None or distributed.rank == 0):
        sink.set_attr("complete", bool(sink.done_mask()[r0:r1, c0:c1].all()))
    outs = sink.outputs()
    finished = int(sink.done_mask()[mine[0]:mine[1], c0:c1].sum())
    yield ProgressEvent("cancelled" if cancelled else "done", finished, total_tiles, message=message)
    return SegmentationResult(
        labels=outs["labels"], probabilities=outs.get("probabilities"), bottleneck=outs.get("bottleneck"),
        communicated=outs.get("communicated"), grid=plan.grid, subdomain_size=plan.subdomain, schedule=chosen,
        output=None if path is None else str(path), cancelled=cancelled, logits=outs.get("logits"),
    )


def _execute(run: _Run) -> Generator[ProgressEvent, None, bool]:
    """Drive the chosen schedule; returns True when cancelled."""
    workers = DeviceWorkers(run.model, run.devices, run.dtype)
    reader = ThreadPoolExecutor(2, thread_name_prefix="ddunet-read")
    writer = ThreadPoolExecutor(WRITERS, thread_name_prefix="ddunet-write")
    try:
        return (yield from _banded(run, workers, reader, writer))
    finally:
        workers.close()
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)


def _banded(run: _Run, workers: DeviceWorkers, reader: ThreadPoolExecutor,
            writer: ThreadPoolExecutor) -> Generator[ProgressEvent, None, bool]:
    """The one loop behind every schedule: bands of grid rows (one row, or all rows for monolithic)."""
    sink, f = run.sink, run.f
    r0, r1, c0, c1 = run.rect
    cols = run.cols
    mono = run.schedule == "monolithic"
    keep_skips = run.schedule in ("wavefront", "monolithic")
    bands = [(r0, r1)] if mono else [(r, r + 1) for r in range(r0, r1)]
    if run.dist is not None and run.dist.world > 1:
        own = run.dist.own_rows(r0, r1, run.k)
        bands = [(r, r + 1) for r in range(*own)]
    decode_bands = [(a, b) for a, b in bands if not run.done[a:b, c0:c1].all()]
    k = run.k

    def window(a: int, b: int) -> tuple[int, int]:
        return (max(r0, a - k), min(r1, b + k)) if run.exchange else (a, b)

    need_rows = sorted({r for a, b in decode_bands for r in range(*window(a, b))}) if run.exchange else []
    decode_total = int(sum((~run.done[a:b, c0:c1]).sum() for a, b in decode_bands))
    own_tiles = sum(b - a for a, b in bands) * len(cols)
    already = own_tiles - decode_total
    encode_total = 0
    for r in need_rows:
        for c in cols:
            if not run.stored[r, c] or (keep_skips and not run.done[r, c] and _owns(run, r)):
                encode_total += 1
    counters = {"encode": 0, "decode": 0, "write": 0, "communicate": 0}
    writes: deque[Future] = deque()

    def cancelled() -> bool:
        return run.cancel is not None and run.cancel.is_set()

    def submit_encode(row: int) -> None:
        """Encode the subdomains of ``row`` whose bottleneck is neither in memory nor stored."""
        hold = keep_skips and _owns(run, row)
        todo, load = [], []
        for c in cols:
            if (row, c) in run.bott:
                continue
            if run.stored[row, c] and not (hold and not run.done[row, c]):
                load.append(c)
            else:
                todo.append(c)
        for c in load:
            run.bott[(row, c)] = torch.from_numpy(sink.load_bottleneck(row, c)).to(run.dtype)
        jobs = []
        for group in _batches(todo, run.batch):
            read = reader.submit(run.read_tiles, row, group)
            keep = hold and any(not run.done[row, c] for c in group)
            jobs.append((group, workers.submit(_encode_job(read, keep, f, run.dtype))))
        run.encoding[row] = jobs

    def collect_encode(row: int) -> Generator[ProgressEvent, None, None]:
        for group, future in run.encoding.pop(row, []):
            if cancelled() and future.cancel():
                continue
            feats, sent = future.result()
            for i, c in enumerate(group):
                run.bott[(row, c)] = sent[i]
                if feats is not None and not run.done[row, c]:
                    run.held[(row, c)] = [t[i:i + 1] for t in feats]
            writes.append(writer.submit(_write_encoded, sink, row, group, _host(sent), run.want_features))
            counters["encode"] += len(group)
            yield ProgressEvent("encode", counters["encode"], encode_total, message=f"encoded row {row}")

    def flush_writes(block: bool) -> Generator[ProgressEvent, None, None]:
        while writes and (block or writes[0].done()):
            for box in writes.popleft().result():
                counters["write"] += 1
                yield ProgressEvent("write", already + counters["write"], own_tiles, region=box)

    if mono and run.exchange:
        # one encode job for the whole grid, as the monolithic forward does
        todo_rows = [r for r in range(r0, r1)]
        read = reader.submit(run.read_rows, r0, r1, cols)
        future = workers.submit(_encode_job(read, True, f, run.dtype))
        feats, sent = future.result()
        n = len(cols)
        for i, (r, c) in enumerate((r, c) for r in todo_rows for c in cols):
            run.bott[(r, c)] = sent[i]
            if not run.done[r, c]:
                run.held[(r, c)] = [t[i:i + 1] for t in feats]
        for j, r in enumerate(todo_rows):
            writes.append(writer.submit(_write_encoded, sink, r, cols, _host(sent[j * n:(j + 1) * n]),
                                        run.want_features))
        del feats
        counters["encode"] = encode_total = len(todo_rows) * n
        yield ProgressEvent("encode", encode_total, encode_total, message="encoded the whole grid")

    if run.exchange and run.dist is not None and run.dist.world > 1:
        # every rank encodes its own rows first; then ranks meet once to swap the halo rows
        own = [r for a, b in bands for r in range(a, b)]
        for r in own:
            submit_encode(r)
        for r in own:
            yield from collect_encode(r)
        run.dist.exchange_halo(run, own, need_rows)

    pending: deque[tuple[int, int, list[tuple[list[int], list[int], Future]]]] = deque()
    interrupted = False
    for a, b in decode_bands:
        if cancelled():
            interrupted = True
            break
        if run.exchange:
            wa, wb = window(a, b)
            lookahead = min(r1, wb + 1) if keep_skips else wb
            for r in range(wa, lookahead):
                missing = r not in run.encoding and not all((r, c) in run.bott for c in cols)
                if missing and (_owns(run, r) or r < wb):
                    submit_encode(r)
            for r in range(wa, wb):
                yield from collect_encode(r)
            if cancelled():
                interrupted = True
                break
            received = _communicate(run, wa, wb, a, b)
            counters["communicate"] += 1
            yield ProgressEvent("communicate", counters["communicate"], len(decode_bands),
                                message=f"communicated rows {a}..{b - 1}")
            if run.want_features:
                writes.append(writer.submit(_write_communicated, sink, a, b, cols, received))
            for key in [key for key in run.bott if key[0] < b - k]:
                del run.bott[key]
        else:
            received = None
        jobs = []
        for r in range(a, b):
            todo = [c for c in cols if not run.done[r, c]]
            for group in _batches(todo, run.batch if not mono else len(todo)):
                held = [run.held.pop((r, c)) for c in group] if all((r, c) in run.held for c in group) else None
                read = None if held is not None else reader.submit(run.read_tiles, r, group)
                comm = None if received is None else torch.cat([received[(r, c)] for c in group])
                jobs.append((r, group, workers.submit(_decode_job(run, read, held, comm))))
        pending.append((a, b, jobs))
        while len(pending) > (0 if mono else 1):
            # the writer runs while the devices decode the next band; wait for it here so that progress
            # (and cancel) follows the data on disk within one band
            yield from _collect_decode(run, pending.popleft(), writer, writes, counters, decode_total)
            yield from flush_writes(True)
    while pending:
        yield from _collect_decode(run, pending.popleft(), writer, writes, counters, decode_total)
    yield from flush_writes(True)
    run.held.clear()
    return interrupted or (cancelled() and counters["decode"] < decode_total)


def _owns(run: _Run, row: int) -> bool:
    if run.dist is None or run.dist.world == 1:
        return True
    a, b = run.dist.own_rows(run.rect[0], run.rect[1], run.k)
    return a <= row < b


def _collect_decode(run: _Run, item: tuple, writer: ThreadPoolExecutor, writes: deque, counters: dict,
                    total: int) -> Generator[ProgressEvent, None, None]:
    _, _, jobs = item
    for row, group, future in jobs:
        if run.cancel is not None and run.cancel.is_set() and future.cancel():
            continue   # not started: dropped; started or finished jobs are still written
        labels, probs, logits, before, after = future.result()
        writes.append(writer.submit(_write_decoded, run.sink, row, group, labels, probs, logits, before, after,
                                    run.want_features))
        counters["decode"] += len(group)
        yield ProgressEvent("decode", counters["decode"], total, message=f"decoded row {row}")


def _host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array on the host; bfloat16 (which numpy lacks) becomes float32."""
    tensor = tensor.detach().to("cpu")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _encode_job(read: Future, keep: bool, f: int, dtype: torch.dtype) -> Callable:
    def job(replica: DDUNet, device: torch.device) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        feats = replica.encode(to_device(read.result(), device, dtype))
        sent = feats[-1][:, feats[-1].shape[1] - f:].to("cpu")
        return (feats if keep else None), sent
    return job


def _decode_job(run: _Run, read: Future | None, held: list[list[torch.Tensor]] | None,
                received: torch.Tensor | None) -> Callable:
    f, want_probs, want_logits = run.f, run.want_probs, run.want_logits
    want_features, per_tile, dtype = run.want_features, run.per_tile_comm, run.dtype

    def job(replica: DDUNet, device: torch.device) -> tuple:
        if held is not None:
            feats = [torch.cat([h[i] for h in held]).to(device) for i in range(len(held[0]))]
        else:
            feats = replica.encode(to_device(read.result(), device, dtype))
        bottleneck = feats[-1]
        split = bottleneck.shape[1] - f
        before = after = None
        if received is not None:
            bottleneck = torch.cat([bottleneck[:, :split], received.to(device)], dim=1)
        elif per_tile:
            sent = bottleneck[:, split:]
            out = replica.comm(sent)
            bottleneck = torch.cat([bottleneck[:, :split], out], dim=1)
            if want_features:
                before, after = _host(sent), _host(out)
        logits = replica.decode([*feats[:-1], bottleneck])
        labels = _host(logits.argmax(1).to(torch.uint8 if logits.shape[1] <= 256 else torch.int32))
        probs = _host(torch.softmax(logits.float(), 1)) if want_probs else None
        raw = _host(logits) if want_logits else None
        return labels, probs, raw, before, after
    return job


def _communicate(run: _Run, wa: int, wb: int, a: int, b: int) -> dict[tuple[int, int], torch.Tensor]:
    """Communication network on bottleneck rows [wa, wb) (all columns), cropped to rows [a, b)."""
    hb, wb_px = run.plan.bottleneck_tile
    device = run.devices[0]
    mosaic = torch.cat([torch.cat([run.bott[(r, c)] for c in run.cols], dim=-1) for r in range(wa, wb)], dim=-2)
    with torch.inference_mode():
        out = run.comm(mosaic[None].to(device=device, dtype=run.dtype))[0].to("cpu")
    received = {}
    for r in range(a, b):
        y = (r - wa) * hb
        for i, c in enumerate(run.cols):
            received[(r, c)] = out[None, :, y:y + hb, i * wb_px:(i + 1) * wb_px]
    return received


def _write_encoded(sink: Sink, row: int, cols: list[int], sent: np.ndarray, features: bool) -> list:
    sink.store_bottleneck(row, cols, sent)
    if features:
        sink.write_features(row, cols, "bottleneck", sent)
    if "_work/encoded" in sink.arrays:
        sink.mark("encoded", row, cols)
    return []


def _write_communicated(sink: Sink, a: int, b: int, cols: list[int], received: dict) -> list:
    for r in range(a, b):
        sink.write_features(r, cols, "communicated", _host(torch.cat([received[(r, c)] for c in cols])))
    return []


def _write_decoded(sink: Sink, row: int, cols: list[int], labels: np.ndarray, probs: np.ndarray | None,
                   logits: np.ndarray | None, before: np.ndarray | None, after: np.ndarray | None,
                   features: bool) -> list[tuple[int, int, int, int]]:
    """All data of the subdomains first, then their "done" marks: a killed run never marks half-written work."""
    boxes = sink.write_tiles(row, cols, labels, probs, logits)
    if features and before is not None:
        sink.write_features(row, cols, "bottleneck", before)
        sink.write_features(row, cols, "communicated", after)
    sink.mark("done", row, cols)
    return boxes


def segment(image: Any, model: Any, *, progress: Callable[[ProgressEvent], Any] | None = None,
            cancel: threading.Event | None = None, return_result: bool = False, **kwargs: Any) -> Any:
    """Run :func:`segment_iter` to the end; ``progress(event)`` sees every event. Returns the labels
    (or the whole :class:`SegmentationResult` with ``return_result=True``)."""
    steps = segment_iter(image, model, cancel=cancel, **kwargs)
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            result: SegmentationResult = stop.value
            return result if return_result else result.labels
        if progress is not None:
            progress(event)
