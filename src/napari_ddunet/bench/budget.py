"""``napari-ddunet bench --budget``: the engine's peak memory above the import baseline against its budget.

Each case runs in a fresh ``spawn`` process: it imports torch, zarr and the engine, builds a tiny DDU-Net
(so 2 cores finish the table in minutes), reads ``VmRSS`` as the baseline, resets the kernel's peak mark
and segments a lazy zarr input (chunks decoded on demand, so the input is never in RAM) into a zarr
store. Large images run their first ``rows`` subdomain rows and then cancel: every schedule's state is
periodic after its first window (k + 2 rows), so later rows repeat the same peak, while the planning,
the store's creation and the full width (what grows with the image) are all paid before them.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_ddunet.bench.runners import _peak_rss, _proc_status, _reset_peak_rss, run_in_child

#: The tiny model of the table: depth 4 (a 256^2 subdomain has a 16^2 bottleneck), F = 4 exchanged channels.
BUDGET_MODEL = {"in_channels": 1, "num_classes": 2, "depth": 4, "base_channels": 2, "comm_features": 4,
                "dropout": 0.0}
SUBDOMAIN = 256
CHUNK = 1024
MB = 1000**2
#: Subdomain rows a large image runs before the cancel: past the first window (k + 2 = 3 rows here).
ROWS = 4
#: A run may use this much more than its budget (issue 12: within 1.25x).
GOAL = 1.25


@dataclass(frozen=True)
class Case:
    """One image shape at one budget; ``rows`` subdomain rows are run (None: all of them)."""

    group: str
    shape: tuple[int, int]
    budget: int
    rows: int | None = ROWS

    @property
    def label(self) -> str:
        return f"{self.shape[0]} x {self.shape[1]} at {self.budget // MB} MB"


@dataclass
class Measurement:
    case: Case
    schedule: str | None = None
    estimate: int | None = None
    inflight: int | None = None
    writes: int | None = None
    rows_run: int | None = None
    baseline_rss: int | None = None
    peak_rss: int | None = None
    seconds: float | None = None
    refused: str | None = None   # the smallest budget the engine names when it refuses this one
    error: str | None = None

    @property
    def above(self) -> int | None:
        """Peak RSS above the import baseline: what the run itself held at most."""
        if self.peak_rss is None or self.baseline_rss is None:
            return None
        return self.peak_rss - self.baseline_rss

    @property
    def ratio(self) -> float | None:
        return None if self.above is None else self.above / self.case.budget

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "above": self.above, "ratio": self.ratio}


def cases(quick: bool) -> list[Case]:
    """The table: budgets 64 MB .. 2 GB on one image; 2048^2 .. 32768^2 and a 512-row strip at one budget."""
    if quick:
        return [Case("budget", (2048, 2048), 64 * MB), Case("budget", (2048, 2048), 512 * MB),
                Case("strip", (512, 8192), 64 * MB)]
    table = [Case("budget", (4096, 4096), b * MB) for b in (64, 128, 256, 512, 1000, 2000)]
    table += [Case("size", (s, s), b * MB) for b in (64, 256) for s in (2048, 8192, 32768)]
    table += [Case("strip", (512, 131072), b * MB, rows=None) for b in (64, 128, 256)]
    return table


def image_path(workdir: Path, shape: tuple[int, int]) -> Path:
    return workdir / f"budget_{shape[0]}x{shape[1]}.zarr"


def write_image(path: Path, shape: tuple[int, int]) -> None:
    """A uint8 zarr of smooth structure and noise, chunk by chunk (four distinct chunks, so even 32768^2
    is written in seconds; the engine cannot tell, it decodes every chunk it reads)."""
    import zarr

    array = zarr.create_array(str(path), shape=shape, chunks=(CHUNK, CHUNK), dtype="u1", overwrite=True)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:CHUNK, 0:CHUNK] / CHUNK
    tiles = [(127 + 80 * np.sin(2 * np.pi * (f * ys + (f + 1) * xs)) + rng.normal(0, 20, (CHUNK, CHUNK)))
             .clip(0, 255).astype(np.uint8) for f in (1, 2, 3, 5)]
    for i, y0 in enumerate(range(0, shape[0], CHUNK)):
        for j, x0 in enumerate(range(0, shape[1], CHUNK)):
            tile = tiles[(i + 2 * j) % 4]
            array[y0:y0 + CHUNK, x0:x0 + CHUNK] = tile[: shape[0] - y0, : shape[1] - x0]


def _child(case: Case, workdir: str, threads: int | None, out: mp.Queue) -> None:
    result = Measurement(case)
    try:
        import torch
        import zarr

        from napari_ddunet.core.inference.engine import segment_iter
        from napari_ddunet.core.inference.progress import Phase
        from napari_ddunet.core.inference.schedule import BudgetError
        from napari_ddunet.core.network.config import ModelConfig
        from napari_ddunet.core.network.model import DDUNet

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = DDUNet(ModelConfig(**BUDGET_MODEL)).eval()
        image = zarr.open_array(str(image_path(Path(workdir), case.shape)), mode="r")
        output = Path(workdir) / f"budget_out_{case.shape[0]}x{case.shape[1]}_{case.budget}.zarr"
        cols = -(-case.shape[1] // SUBDOMAIN)
        stop = None if case.rows is None else case.rows * cols
        cancel = threading.Event()
        result.baseline_rss = _proc_status("VmRSS")
        _reset_peak_rss()
        start = time.perf_counter()
        events = segment_iter(image, model, subdomain_size=(SUBDOMAIN, SUBDOMAIN), output=str(output),
                              memory_budget=case.budget, cancel=cancel, overwrite=output.exists())
        try:
            while True:
                event = next(events)
                if event.phase == Phase.WRITE and stop is not None and event.done >= stop:
                    cancel.set()
        except StopIteration as finished:
            run = finished.value
        except BudgetError as refusal:
            result.refused = str(refusal).split("needs at least ")[-1].split(";")[0]
            out.put(result)
            return
        result.seconds = time.perf_counter() - start
        result.peak_rss = _peak_rss()
        result.schedule = run.schedule
        result.rows_run = int(np.asarray(zarr.open_group(str(output), mode="r")["_work/done"][...]).all(1).sum())
        plan = _plan(image, model, case)
        result.estimate, result.inflight, result.writes = plan.estimate, plan.inflight, plan.writes
        shutil.rmtree(output, ignore_errors=True)
    except Exception as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        result.error = f"{type(error).__name__}: {error} ({Path(last.filename).name}:{last.lineno})"
    out.put(result)


def _plan(image: Any, model: Any, case: Case):
    """The engine's plan for the case (after the run, so it is not part of the measured peak)."""
    import torch

    from napari_ddunet.core.inference.request import build_request
    from napari_ddunet.core.inference.schedule import plan_schedule

    request = build_request(image, model, subdomain_size=(SUBDOMAIN, SUBDOMAIN), devices="cpu", output=None,
                            memory_budget=case.budget, features=False, probabilities=False, logits=False,
                            channel_axis=None, region=None, communicate=None, resume=False, overwrite=False,
                            dtype=torch.float32, schedule=None, distributed=None)
    return plan_schedule(request)


def measure(case: Case, workdir: Path, threads: int | None, timeout: float) -> Measurement:
    """One case in a fresh process; a crash or a timeout becomes an error row."""
    return run_in_child(_child, (case, str(workdir), threads), timeout, lambda reason: Measurement(case, error=reason))


def run_table(workdir: Path, quick: bool, threads: int | None, timeout: float, log: Any = None) -> list[Measurement]:
    """Write the inputs, then measure every case one after another (never two at once: peaks are per process)."""
    table = cases(quick)
    for shape in dict.fromkeys(c.shape for c in table):
        if not image_path(workdir, shape).exists():
            write_image(image_path(workdir, shape), shape)
    results = []
    for i, case in enumerate(table, 1):
        result = measure(case, workdir, threads, timeout)
        if log is not None:
            status = result.error or (result.refused and f"refused, needs {result.refused}") or \
                f"{result.schedule}, {result.above / MB:.0f} MB above baseline ({result.ratio:.2f}x budget), " \
                f"{result.seconds:.0f} s"
            print(f"[{i}/{len(table)}] {case.label}: {status}", file=log, flush=True)
        results.append(result)
    return results


def format_table(results: list[Measurement], machine: dict[str, Any]) -> str:
    """Markdown: every case with its schedule, queue bounds, peak above baseline and ratio to the budget."""
    lines = [f"machine: {machine.get('cpu')}, {machine.get('usable_cpus')} usable CPUs, torch "
             f"{machine.get('torch')} ({machine.get('torch_threads')} threads), load average "
             f"{', '.join(f'{v:.1f}' for v in machine.get('load_average') or ())}",
             f"model: DDU-Net(4, 4, Y), base 2 channels, {SUBDOMAIN}^2 subdomains, uint8 zarr in "
             f"({CHUNK}^2 chunks), zarr out, float32",
             "",
             "| case | image | budget | schedule | estimate | in flight / writes | rows run | baseline | "
             "peak above baseline | / budget | / 2048^2 | s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    flat = {r.case.budget: r.above for r in results if r.case.shape == (2048, 2048) and r.above is not None}
    refused = [r for r in results if r.refused]
    for r in results:
        c = r.case
        if r.error or r.refused:
            what = f"error: {r.error}" if r.error else f"refused: needs at least {r.refused}"
            lines.append(f"| {c.group} | {c.shape[0]} x {c.shape[1]} | {c.budget // MB} MB | {what} | | | | | | | | |")
            continue
        base = flat.get(c.budget)
        versus = f"{r.above / base:.2f}" if base else ""
        lines.append(f"| {c.group} | {c.shape[0]} x {c.shape[1]} | {c.budget // MB} MB | {r.schedule} | "
                     f"{r.estimate / MB:.0f} MB | {r.inflight} / {r.writes} | {r.rows_run} of "
                     f"{-(-c.shape[0] // SUBDOMAIN)} | {r.baseline_rss / MB:.0f} MB | {r.above / MB:.0f} MB | "
                     f"{r.ratio:.2f} | {versus} | {r.seconds:.0f} |")
    worst = max((r.ratio for r in results if r.ratio is not None), default=None)
    if worst is not None:
        verdict = "holds" if worst <= GOAL else "does not hold"
        lines += ["", f"largest peak / budget: {worst:.2f} (goal <= {GOAL}: {verdict})"]
    if refused:
        lines.append(f"refused before any output (exit 2 on the command line): {len(refused)} case(s)")
    return "\n".join(lines)
