"""The stages of one run: read, encode, communicate, decode, write, around bounded queues.

Like torch-em's ``predict_with_halo``, each stage is a named step with its own workers: two reader
threads load and normalise subdomains, one thread per device encodes and decodes, :data:`WRITERS`
threads write finished subdomains. What sits between the stages is bounded by the schedule's memory
plan: device jobs are queued lazily and launched (their read submitted, then the device job) in order
while fewer than ``inflight`` subdomains are launched and not yet taken by the main thread, at most
``writes`` subdomains wait for the writer, and the
:class:`~napari_ddunet.core.inference.bottleneck.BottleneckCache` holds only the rows a later window
still needs. The main thread takes jobs in the order it queued them, so the job it waits for is always
the next to launch once those before it are taken: the bounds never deadlock. Every chunk of the store
belongs to one subdomain, so concurrent writers never share one.

A band of subdomain rows can be finished once the ``k = ceil(halo / hb)`` rows below it are encoded:
the communication network runs on the bottleneck rows ``[a - k, b + k)`` (all columns) and is cropped to
``[a, b)``. Its zero "same" padding only matters at the true mosaic border, which the window shares,
so the result equals the monolithic forward. The same holds across columns: the network runs on
``comm_cols`` columns at a time plus ``halo_cols`` on each side, so its memory does not grow with the width.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from napari_ddunet.core.inference.bottleneck import BottleneckCache
from napari_ddunet.core.inference.devices import DeviceWorkers, to_device
from napari_ddunet.core.inference.progress import Phase, ProgressEvent
from napari_ddunet.core.inference.request import SegmentRequest
from napari_ddunet.core.inference.schedule import SchedulePlan
from napari_ddunet.core.inference.sink import Sink
from napari_ddunet.core.inference.store import host
from napari_ddunet.core.network.model import DDUNet

#: Writer threads: every chunk has one subdomain, so writes of different subdomains never collide.
WRITERS = 4



@dataclass(eq=False)
class Job:
    """A device job of ``size`` subdomains of grid row ``row``; ``start`` submits its read and device work."""

    row: int
    cols: list[int]
    size: int
    start: Callable[[], Future]
    future: Future | None = None


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _drain(jobs: list[Job]) -> Iterator[Job]:
    """The jobs in order, each dropped from the list as it is handed out: a taken job's future holds its
    result, so a whole row of them must not stay referenced until the row is done."""
    jobs.reverse()
    while jobs:
        yield jobs.pop()


class Scheduler:
    """Runs one validated request on its schedule; :meth:`run` yields progress and returns "cancelled"."""

    def __init__(self, request: SegmentRequest, schedule: SchedulePlan, sink: Sink,
                 cancel: threading.Event | None) -> None:
        self.req, self.sink, self.cancel = request, sink, cancel
        self.batch = schedule.batch
        self.limit, self.write_limit = schedule.inflight, schedule.writes
        self.comm_cols, self.halo_cols = schedule.comm_cols, schedule.halo_cols
        self.mono = schedule.name == "monolithic"
        self.keep_skips = schedule.name in ("wavefront", "monolithic")
        self.k, self.cols, self.f = request.halo_rows, request.cols, request.sent_features
        self.own = request.own_rows()
        self._load_progress_record()
        self.cache = BottleneckCache(self.cols, request.plan.bottleneck_tile, self.f, request.dtype)
        self.held: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.peak_held = 0   # most subdomains whose skips wait for their decode
        self.encoding: dict[int, list[Job]] = {}
        self.queued: deque[Job] = deque()      # jobs not launched yet, in the order the main thread takes them
        self.inflight = self.peak_inflight = 0   # subdomains launched and not yet taken
        self.writes: deque[tuple[Future, int]] = deque()
        self.writing = self.peak_writes = 0      # subdomains whose results wait for the writer
        self.comm = None
        if request.exchange:
            self.comm = copy.deepcopy(request.model.comm).to(device=request.devices[0], dtype=request.dtype).eval()
        self.bands = self._bands()
        c0, c1 = request.rect[2:]
        self.decode_bands = [(a, b) for a, b in self.bands if not self.done[a:b, c0:c1].all()]
        windows = (range(*self.window(a, b)) for a, b in self.decode_bands)
        self.need_rows = sorted({r for rows in windows for r in rows}) if request.exchange else []
        self.decode_total = int(sum((~self.done[a:b, c0:c1]).sum() for a, b in self.decode_bands))
        self.total = sum(b - a for a, b in self.bands) * len(self.cols)
        self.finished = self.total - self.decode_total
        self.decoded = 0

    def _load_progress_record(self) -> None:
        """Which subdomains are done and which bottlenecks are stored (a resumed store's record)."""
        grid, resume = self.req.plan.grid, self.req.output.resume
        self.done = self.sink.done_mask() if resume else np.zeros(grid, dtype=bool)
        self.stored = self.sink.encoded_mask() if resume else np.zeros(grid, dtype=bool)
        if resume and self.f == 0:
            self.stored[:] = False

    def _bands(self) -> list[tuple[int, int]]:
        """Bands of grid rows decoded together: one row, all rows for monolithic, this rank's rows under torchrun."""
        r0, r1 = self.req.rect[:2]
        if self.req.world > 1:
            return [(r, r + 1) for r in range(*self.own)]
        return [(r0, r1)] if self.mono else [(r, r + 1) for r in range(r0, r1)]

    def window(self, a: int, b: int) -> tuple[int, int]:
        """The bottleneck rows the communication of rows [a, b) reads."""
        r0, r1 = self.req.rect[:2]
        return (max(r0, a - self.k), min(r1, b + self.k)) if self.req.exchange else (a, b)

    def owns(self, row: int) -> bool:
        return self.own[0] <= row < self.own[1]

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def event(self, phase: Phase, message: str = "") -> ProgressEvent:
        return ProgressEvent(phase, self.finished, self.total, message=message)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> Generator[ProgressEvent, None, bool]:
        """Start the stage workers, drive the stages, stop the workers; returns True when cancelled."""
        self.workers = DeviceWorkers(self.req.model, self.req.devices, self.req.dtype)
        self.reader = ThreadPoolExecutor(2, thread_name_prefix="ddunet-read")
        self.writer = ThreadPoolExecutor(WRITERS, thread_name_prefix="ddunet-write")
        try:
            return (yield from self._stages())
        finally:
            self.workers.close()
            self.reader.shutdown(wait=True, cancel_futures=True)
            self.writer.shutdown(wait=True)

    def _stages(self) -> Generator[ProgressEvent, None, bool]:
        if self.mono and self.req.exchange:
            yield from self.encode_whole_grid()
        if self.req.exchange and self.req.world > 1:
            yield from self.encode_own_band()
        interrupted = yield from self._band_pipeline()
        yield from self.flush(block=True)
        self.queued.clear()
        self.held.clear()
        return interrupted or (self.cancelled() and self.decoded < self.decode_total)

    def _band_pipeline(self) -> Generator[ProgressEvent, None, bool]:
        """Encode, communicate and submit band after band; collect one band while the next decodes."""
        pending: deque[list[Job]] = deque()
        depth = 0 if self.mono else 1
        interrupted = False
        for a, b in self.decode_bands:
            if self.cancelled():
                interrupted = True
                break
            received = None
            if self.req.exchange:
                yield from self.encode_window(a, b)
                if self.cancelled():
                    interrupted = True
                    break
                received = yield from self.communicate(a, b)
            pending.append(self.submit_decode(a, b, received))
            while len(pending) > depth:
                # the writer runs while the devices decode the next band; wait for it here so that progress
                # (and cancel) follows the data on disk within one band
                yield from self.collect_decode(pending.popleft())
                yield from self.flush(block=True)
        while pending:
            yield from self.collect_decode(pending.popleft())
        return interrupted

    # -- the bounded job queue ------------------------------------------------------------------

    def enqueue(self, job: Job) -> Job:
        self.queued.append(job)
        self._launch()
        return job

    def _launch(self) -> None:
        """Launch queued jobs in order while the in-flight bound allows (one job always, if none is in flight);
        none once cancelled."""
        while self.queued and (not self.inflight or self.inflight + self.queued[0].size <= self.limit) \
                and not self.cancelled():
            job = self.queued.popleft()
            job.future = job.start()
            self.inflight += job.size
            self.peak_inflight = max(self.peak_inflight, self.inflight)

    def take(self, job: Job) -> Future | None:
        """The job's future, launching it if it still waits; None when a cancel drops it unlaunched."""
        if job.future is None:
            if self.cancelled():
                self.queued.remove(job)
                return None
            self._launch()
        if job.future is None:   # not next in line: launch it anyway rather than wait on jobs behind it
            self.queued.remove(job)
            job.future = job.start()
            self.inflight += job.size
            self.peak_inflight = max(self.peak_inflight, self.inflight)
        return job.future

    def release(self, job: Job) -> None:
        """The main thread has taken the job's result: its slots go to the next queued jobs."""
        self.inflight -= job.size
        self._launch()

    def result(self, job: Job) -> object | None:
        """Wait for a job and free its slots; None when a cancel dropped it before it ran."""
        future = self.take(job)
        if future is None:
            return None
        try:
            if self.cancelled() and future.cancel():
                return None
            return future.result()
        finally:
            self.release(job)

    # -- read ----------------------------------------------------------------------------------

    def read_tiles(self, row: int, cols: Sequence[int]) -> np.ndarray:
        """Normalised (n, C, h, w) inputs of subdomains (row, c) for c in cols, in the compute precision.

        Each run of adjacent columns is one read, so storage chunks shared by neighbours decode once.
        """
        w = self.req.plan.subdomain[1]
        tiles = []
        for c0 in [c for i, c in enumerate(cols) if i == 0 or cols[i - 1] != c - 1]:
            n = 1
            while c0 + n in cols:
                n += 1
            y0, y1, x0, _ = self.req.plan.tile_box(row, c0)
            block = self.req.source.read(y0, y1, x0, x0 + n * w)
            tiles += [block[:, :, i * w:(i + 1) * w] for i in range(n)]
        batch = np.stack(tiles)
        if self.req.mean is not None:
            batch = (batch - self.req.mean[:, None, None]) / self.req.std[:, None, None]
        # cast on the reader thread, so a float32 run moves half the bytes to the device
        return batch.astype(np.float64 if self.req.dtype == torch.float64 else np.float32, copy=False)

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        return np.concatenate([self.read_tiles(r, self.cols) for r in range(r0, r1)])

    # -- encode --------------------------------------------------------------------------------

    def encode_whole_grid(self) -> Generator[ProgressEvent, None, None]:
        """One encode job for the whole grid, as the monolithic forward does."""
        r0, r1 = self.req.rect[:2]
        cols, n = self.cols, len(self.cols)

        def start() -> Future:
            read = self.reader.submit(self.read_rows, r0, r1)
            return self.workers.submit(partial(self._encode_on, read, True))

        feats, sent = self.result(self.enqueue(Job(r0, cols, (r1 - r0) * n, start)))
        for i, (r, c) in enumerate((r, c) for r in range(r0, r1) for c in cols):
            self.cache.put(r, c, sent[i])
            if not self.done[r, c]:
                self.held[(r, c)] = [t[i:i + 1] for t in feats]
        for j, r in enumerate(range(r0, r1)):
            yield from self.write(n, self._write_encoded, r, cols, host(sent[j * n:(j + 1) * n]))
        del feats
        yield self.event(Phase.ENCODE, "encoded the whole grid")

    def encode_own_band(self) -> Generator[ProgressEvent, None, None]:
        """Under torchrun: encode all of this rank's rows, then swap the halo rows with the other ranks once."""
        own = [r for a, b in self.bands for r in range(a, b)]
        for i, r in enumerate(own):
            # rows are queued one ahead of the one collected, so the jobs queued stay O(columns)
            for ahead in own[i:i + 2]:
                if ahead not in self.encoding:
                    self.submit_encode(ahead)
            yield from self.collect_encode(r)
        self.req.distributed.exchange_halo(self.cache, own, self.need_rows, self.k)

    def encode_window(self, a: int, b: int) -> Generator[ProgressEvent, None, None]:
        """Make sure the window of rows [a, b) is encoded; start the row after it (wavefront look-ahead)."""
        wa, wb = self.window(a, b)
        # one row ahead on every schedule: the devices work while the main thread communicates, and jobs are
        # queued in the order they are taken (this row's encodes before the next band's decodes)
        lookahead = min(self.req.rect[1], wb + 1)
        for r in range(wa, lookahead):
            missing = r not in self.encoding and not self.cache.has_row(r)
            if missing and (self.owns(r) or r < wb):
                self.submit_encode(r)
        for r in range(wa, wb):
            yield from self.collect_encode(r)

    def submit_encode(self, row: int) -> None:
        """Encode the subdomains of ``row`` whose bottleneck is neither in memory nor stored."""
        hold = self.keep_skips and self.owns(row)
        todo, load = [], []
        for c in self.cols:
            if (row, c) in self.cache:
                continue
            if self.stored[row, c] and not (hold and not self.done[row, c]):
                load.append(c)
            else:
                todo.append(c)
        for c in load:
            self.cache.put(row, c, torch.from_numpy(self.sink.load_bottleneck(row, c)).to(self.req.dtype))
        jobs = []
        for group in _batches(todo, self.batch):
            keep = hold and any(not self.done[row, c] for c in group)
            jobs.append(self.enqueue(Job(row, group, len(group), partial(self._start_encode, row, group, keep))))
        self.encoding[row] = jobs

    def _start_encode(self, row: int, group: list[int], keep: bool) -> Future:
        read = self.reader.submit(self.read_tiles, row, group)
        return self.workers.submit(partial(self._encode_on, read, keep))

    def collect_encode(self, row: int) -> Generator[ProgressEvent, None, None]:
        for job in _drain(self.encoding.pop(row, [])):
            done = self.result(job)
            if done is None:
                continue
            feats, sent = done
            for i, c in enumerate(job.cols):
                self.cache.put(row, c, sent[i])
                if feats is not None and not self.done[row, c]:
                    self.held[(row, c)] = [t[i:i + 1] for t in feats]
            self.peak_held = max(self.peak_held, len(self.held))
            yield from self.write(job.size, self._write_encoded, row, job.cols, host(sent))
            yield self.event(Phase.ENCODE, f"encoded row {row}")

    def _encode_on(self, read: Future, keep: bool, replica: DDUNet,
                   device: torch.device) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        """Device job: all encoder features (when the wavefront keeps them) and the F sent channels."""
        feats = replica.encode(to_device(read.result(), device, self.req.dtype))
        # a copy: a view would keep every bottleneck channel alive in the cache, not only the F it needs
        sent = feats[-1][:, feats[-1].shape[1] - self.f:].to("cpu", copy=True)
        return (feats if keep else None), sent

    # -- communicate ---------------------------------------------------------------------------

    def communicate(self, a: int, b: int) -> Generator[ProgressEvent, None, dict[tuple[int, int], torch.Tensor]]:
        """The communicated bottlenecks of rows [a, b); rows no later window reads leave the cache."""
        received = self._communicate(*self.window(a, b), a, b)
        yield self.event(Phase.COMMUNICATE, f"communicated rows {a}..{b - 1}")
        if self.req.output.features:
            # its tensors are the received rows the band holds anyway: no subdomain of the write bound
            yield from self.write(0, self._write_communicated, a, b, received)
        self.cache.evict_above(b - self.k)
        return received

    def _communicate(self, wa: int, wb: int, a: int, b: int) -> dict[tuple[int, int], torch.Tensor]:
        """Communication network on bottleneck rows [wa, wb) (all columns), cropped to rows [a, b).

        It runs on ``comm_cols`` columns at a time with ``halo_cols`` more on each side, cropped to its own
        columns: exact for the reason the row window is (the zero padding only matters at the true border).
        """
        hb, wb_px = self.req.plan.bottleneck_tile
        n = len(self.cols)
        received = {}
        for j0 in range(0, n, self.comm_cols):
            j1 = min(n, j0 + self.comm_cols)
            s0, s1 = max(0, j0 - self.halo_cols), min(n, j1 + self.halo_cols)
            mosaic = self.cache.mosaic(wa, wb, s0, s1)
            with torch.inference_mode():
                out = self.comm(mosaic[None].to(device=self.req.devices[0], dtype=self.req.dtype))[0].to("cpu")
            for r in range(a, b):
                y = (r - wa) * hb
                for j in range(j0, j1):
                    x = (j - s0) * wb_px
                    # a copy, so the window's output is freed once cropped
                    received[(r, self.cols[j])] = out[None, :, y:y + hb, x:x + wb_px].clone()
        return received

    # -- decode --------------------------------------------------------------------------------

    def submit_decode(self, a: int, b: int, received: dict | None) -> list[Job]:
        """Decode jobs for the unfinished subdomains of rows [a, b), from held skips or re-encoded inputs."""
        jobs = []
        for r in range(a, b):
            todo = [c for c in self.cols if not self.done[r, c]]
            for group in _batches(todo, max(1, len(todo)) if self.mono else self.batch):
                whole = all((r, c) in self.held for c in group)
                held = [self.held.pop((r, c)) for c in group] if whole else None
                comm = None if received is None else torch.cat([received[(r, c)] for c in group])
                start = partial(self._start_decode, r, group, held, comm)
                jobs.append(self.enqueue(Job(r, group, len(group), start)))
        return jobs

    def _start_decode(self, row: int, group: list[int], held: list | None, comm: torch.Tensor | None) -> Future:
        read = None if held is not None else self.reader.submit(self.read_tiles, row, group)
        return self.workers.submit(partial(self._decode_on, read, held, comm))

    def collect_decode(self, jobs: list[Job]) -> Generator[ProgressEvent, None, None]:
        for job in _drain(jobs):
            done = self.result(job)
            if done is None:
                continue   # not started: dropped; started or finished jobs are still written
            labels, probs, logits, before, after = done
            yield from self.write(job.size, self._write_decoded, job.row, job.cols, labels, probs, logits,
                                  before, after)
            self.decoded += job.size
            yield self.event(Phase.DECODE, f"decoded row {job.row}")

    def _decode_on(self, read: Future | None, held: list[list[torch.Tensor]] | None, received: torch.Tensor | None,
                   replica: DDUNet, device: torch.device) -> tuple:
        """Device job: labels (and on request probabilities, logits, per-subdomain features) of one group."""
        if held is not None:
            feats = [torch.cat([h[i] for h in held]).to(device) for i in range(len(held[0]))]
        else:
            feats = replica.encode(to_device(read.result(), device, self.req.dtype))
        bottleneck = feats[-1]
        split = bottleneck.shape[1] - self.f
        before = after = None
        if received is not None:
            bottleneck = torch.cat([bottleneck[:, :split], received.to(device)], dim=1)
        elif self.req.per_tile_comm:
            sent = bottleneck[:, split:]
            out = replica.comm(sent)
            bottleneck = torch.cat([bottleneck[:, :split], out], dim=1)
            if self.req.output.features:
                before, after = host(sent), host(out)
        logits = replica.decode([*feats[:-1], bottleneck])
        labels = host(logits.argmax(1).to(torch.uint8 if logits.shape[1] <= 256 else torch.int32))
        probs = host(torch.softmax(logits.float(), 1)) if self.req.output.probabilities else None
        raw = host(logits) if self.req.output.logits else None
        return labels, probs, raw, before, after

    # -- write ---------------------------------------------------------------------------------

    def write(self, size: int, fn: Callable[..., list], *args: object) -> Generator[ProgressEvent, None, None]:
        """Hand ``size`` subdomains' results to a writer once at most ``writes`` wait (one write always may)."""
        while self.writes and self.writing + size > self.write_limit:
            yield from self._written()
        self.writes.append((self.writer.submit(fn, *args), size))
        self.writing += size
        self.peak_writes = max(self.peak_writes, self.writing)

    def _written(self) -> Generator[ProgressEvent, None, None]:
        """Wait for the oldest write; one ``write`` event per subdomain it finished."""
        future, size = self.writes.popleft()
        boxes = future.result()
        self.writing -= size
        for box in boxes:
            self.finished += 1
            yield ProgressEvent(Phase.WRITE, self.finished, self.total, region=box)

    def flush(self, block: bool) -> Generator[ProgressEvent, None, None]:
        """Collect finished writes (all of them when ``block``)."""
        while self.writes and (block or self.writes[0][0].done()):
            yield from self._written()

    def _write_encoded(self, row: int, cols: list[int], sent: np.ndarray) -> list:
        self.sink.store_bottleneck(row, cols, sent)
        if self.req.output.features:
            self.sink.write_features(row, cols, "bottleneck", sent)
        if "_work/encoded" in self.sink.arrays:
            self.sink.mark("encoded", row, cols)
        return []

    def _write_communicated(self, a: int, b: int, received: dict) -> list:
        for r in range(a, b):
            mosaic = torch.cat([received[(r, c)] for c in self.cols])
            self.sink.write_features(r, self.cols, "communicated", host(mosaic))
        return []

    def _write_decoded(self, row: int, cols: list[int], labels: np.ndarray, probs: np.ndarray | None,
                       logits: np.ndarray | None, before: np.ndarray | None,
                       after: np.ndarray | None) -> list[tuple[int, int, int, int]]:
        """All data of the subdomains first, then their "done" marks: a killed run never marks half-written work."""
        boxes = self.sink.write_tiles(row, cols, labels, probs, logits)
        if self.req.output.features and before is not None:
            self.sink.write_features(row, cols, "bottleneck", before)
            self.sink.write_features(row, cols, "communicated", after)
        self.sink.mark("done", row, cols)
        return boxes
