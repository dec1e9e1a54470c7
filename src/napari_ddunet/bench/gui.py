"""``napari-ddunet bench --gui``: the dock widget's cost over a headless run, measured once on this machine.

Wall-clock numbers depend on the machine's load, so they are a benchmark (recorded with the load
average in docs/benchmarks.md), not a CI gate; tests/gui/test_responsiveness.py keeps the structural part.
It reports: the widget's run time over the same engine call made headless (as the CLI makes it:
same image, checkpoint, devices, budget, subdomain), how long the Run click blocks the GUI thread,
the event loop's longest gap during the run, and how many layer refreshes the progress events cost.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Period of the probe timer that measures the event loop's gaps (ms).
TICK_MS = 10
BUNDLED_MODEL = "bluemarble_ddunet_y"


@dataclass
class GuiReport:
    """One measurement of the widget against a headless run of the same request."""

    image: str
    shape: tuple[int, ...]
    checkpoint: str
    devices: tuple[str, ...]
    headless_s: float
    widget_s: float
    click_ms: float
    max_gap_ms: float
    p99_gap_ms: float
    median_gap_ms: float
    progress_events: int
    layer_refreshes: int
    engine_threads: list[str]
    machine: dict[str, Any] = field(default_factory=dict)
    #: CPU seconds of the whole process during each half, and of the GUI thread (and of its layer
    #: refreshes) during the widget's: where the widget's extra wall time goes on a machine without spare cores.
    headless_cpu_s: float = 0.0
    widget_cpu_s: float = 0.0
    gui_thread_cpu_s: float = 0.0
    refresh_s: float = 0.0
    #: the live display's measured cost of one tick (progress repaint, re-slice and paint: the GUI thread's
    #: stall), median of the run's last five, and the spacing it chose from it (plugin/live.RefreshPacer)
    redraw_ms: float = 0.0
    refresh_interval_ms: float = 0.0
    #: CPU seconds per thread name during the widget's half, busiest first (Linux /proc; empty elsewhere).
    thread_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.widget_s / self.headless_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widget_over_headless": self.ratio}


def machine_state() -> dict[str, Any]:
    """CPU count, torch threads and the load average at the time of the measurement."""
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def bluemarble_image(quick: bool) -> tuple[str, np.ndarray]:
    """The Blue Marble sample, or a 512 x 1024 crop of it (Europe and Africa) for ``--quick``."""
    from napari_ddunet.core.data.bluemarble import load_image

    image = load_image()
    if quick:
        return "Blue Marble crop 512x1024", np.ascontiguousarray(image[600:1112, 2400:3424])
    return "Blue Marble 2700x5400", image


def _headless_seconds(image: np.ndarray, model: Any, request: dict[str, Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of one headless run."""
    from napari_ddunet.core.inference.engine import segment

    start, cpu = time.perf_counter(), time.process_time()
    segment(image, model, **request)
    return time.perf_counter() - start, time.process_time() - cpu


def _thread_ticks() -> dict[int, tuple[str, int]]:
    """CPU clock ticks (user + system) of each of this process's threads, with its name (Linux only)."""
    ticks: dict[int, tuple[str, int]] = {}
    for task in (os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []):
        try:
            with open(f"/proc/self/task/{task}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        ticks[int(task)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def _cpu_by_thread_name(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds spent between two :func:`_thread_ticks` samples, summed per thread name, busiest first."""
    per_second = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for tid, (name, ticks) in after.items():
        used = (ticks - before.get(tid, (name, 0))[1]) / per_second
        spent[name] = spent.get(name, 0.0) + used
    return dict(sorted(((k, round(v, 1)) for k, v in spent.items() if v > 0), key=lambda kv: -kv[1]))


def _record_engine_threads(names: list[str]):
    """Wrap the engine's generator so the benchmark sees which thread runs each of its steps."""
    from napari_ddunet.core.inference import engine

    original = engine.segment_iter

    def recording(*args: Any, **kwargs: Any):
        generator = original(*args, **kwargs)
        names.append(threading.current_thread().name)
        return (yield from generator)

    engine.segment_iter = recording
    return original


def measure(image: np.ndarray, name: str, checkpoint: str, devices: tuple[str, ...],
            budget_mib: int = 0, timeout_s: float = 900.0) -> GuiReport:
    """Run ``image`` once headless and once from the dock widget in a shown viewer; see the module doc."""
    import napari
    from qtpy.QtCore import QCoreApplication, QTimer

    from napari_ddunet.core.checkpoints.format import load_checkpoint
    from napari_ddunet.core.inference import engine
    from napari_ddunet.plugin.widget import DDUNetWidget
    from napari_ddunet.plugin.widget.results import labels_name

    viewer = napari.Viewer(show=True)
    try:
        widget = DDUNetWidget(viewer)
        form = widget.form
        form.persist = False  # the benchmark's settings are not the user's remembered preferences
        viewer.window.add_dock_widget(widget, name="DDU-Net")
        viewer.add_image(image, name="bench", rgb=image.ndim == 3 and image.shape[-1] in (3, 4))
        if not widget.load_checkpoint(checkpoint, quiet=True):
            raise RuntimeError(f"the widget could not load {checkpoint}")
        form.devices.value = list(devices)
        form.features.value = False
        form.current_view_only.value = False  # the whole image, whatever the remembered state says
        form.memory_budget_mb.value = budget_mib
        form.output.value = ""
        for _ in range(50):
            QCoreApplication.processEvents()
        request: dict[str, Any] = {"subdomain_size": tuple(form.subdomain_size.value), "devices": tuple(devices),
                                   "channel_axis": form.channel_axis.value}
        if budget_mib:
            request["memory_budget"] = budget_mib * 2**20
        model = load_checkpoint(checkpoint)
        _headless_seconds(image[:256, :256], model, {**request, "subdomain_size": None})  # warm-up
        headless, headless_cpu = _headless_seconds(image, model, request)

        controller = widget.controller
        ticks: list[float] = []
        events: list[Any] = []
        threads: list[str] = []
        probe = QTimer()
        probe.setInterval(TICK_MS)
        probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
        controller.progressed.connect(lambda _request, event: events.append(event))
        original = _record_engine_threads(threads)
        refreshes, restore_refresh = _count_refreshes(labels_name(widget.image_layer()))
        try:
            probe.start()
            for _ in range(5):
                QCoreApplication.processEvents()
            threads_before = _thread_ticks()
            start, cpu, gui_cpu = time.perf_counter(), time.process_time(), time.thread_time()
            if widget.run() is None:
                raise RuntimeError("the widget did not start the run")
            click = time.perf_counter() - start
            controller.wait(timeout_s)
            elapsed = time.perf_counter() - start
            widget_cpu, gui_cpu = time.process_time() - cpu, time.thread_time() - gui_cpu
            by_thread = _cpu_by_thread_name(threads_before, _thread_ticks())
            probe.stop()
        finally:
            engine.segment_iter = original
            restore_refresh()
        if controller.running:
            widget.cancel()
            raise RuntimeError(f"the widget's run did not finish within {timeout_s:.0f} s")
        if controller.result is None or controller.result.cancelled:
            raise RuntimeError(f"the widget's run failed or was cancelled: {controller.error!r}")
        gaps = np.diff([start, *[t for t in ticks if t >= start]]) * 1000
        return GuiReport(
            image=name, shape=tuple(image.shape), checkpoint=str(checkpoint), devices=tuple(devices),
            headless_s=headless, widget_s=elapsed, click_ms=click * 1000,
            max_gap_ms=float(gaps.max()), p99_gap_ms=float(np.percentile(gaps, 99)),
            median_gap_ms=float(np.median(gaps)), progress_events=len(events), layer_refreshes=int(refreshes[0]),
            engine_threads=sorted(set(threads)), machine=machine_state(), headless_cpu_s=headless_cpu,
            widget_cpu_s=widget_cpu, gui_thread_cpu_s=gui_cpu, refresh_s=refreshes[1],
            thread_cpu_s=by_thread, redraw_ms=widget.live.pacer.cost_s * 1000,
            refresh_interval_ms=widget.live.pacer.interval_s() * 1000,
        )
    finally:
        viewer.close()


def _count_refreshes(layer_name: str) -> tuple[list[float], Any]:
    """Count and time ``refresh`` calls of the Labels layer named ``layer_name``, whichever instance the widget makes.

    Returns ``[calls, seconds]`` (updated in place) and the function that restores ``Labels.refresh``.
    """
    from napari.layers import Labels

    count = [0, 0.0]
    refresh = Labels.refresh

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name != layer_name:
            return refresh(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return refresh(self, *args, **kwargs)
        finally:
            count[0] += 1
            count[1] += time.perf_counter() - start

    Labels.refresh = counting

    def restore() -> None:
        Labels.refresh = refresh

    return count, restore


def format_report(report: GuiReport) -> str:
    """The numbers of one measurement, one per line."""
    load = ", ".join(f"{x:.2f}" for x in report.machine["load_average"])
    return "\n".join([
        f"GUI benchmark: {report.image} {report.shape}, {report.checkpoint}, devices {', '.join(report.devices)}",
        f"machine: {report.machine['cpus']} CPUs, {report.machine['torch_threads']} torch threads, load {load}",
        f"headless run (as the CLI)  {report.headless_s:8.2f} s",
        f"widget run                 {report.widget_s:8.2f} s",
        f"widget / headless          {report.ratio:8.2f} x   (goal <= 1.2)",
        f"Run click blocks the GUI   {report.click_ms:8.1f} ms",
        f"event loop gap: max {report.max_gap_ms:.0f} ms, p99 {report.p99_gap_ms:.0f} ms, "
        f"median {report.median_gap_ms:.0f} ms (probe every {TICK_MS} ms)",
        f"progress events {report.progress_events}, layer refreshes {report.layer_refreshes} "
        f"({report.refresh_s:.1f} s on the GUI thread)",
        f"one display tick stalls the GUI {report.redraw_ms:.0f} ms: a tick every {report.refresh_interval_ms:.0f} ms",
        f"CPU seconds: headless {report.headless_cpu_s:.1f}, widget {report.widget_cpu_s:.1f} "
        f"(GUI thread {report.gui_thread_cpu_s:.1f})",
        "widget half, CPU s per thread: " + ", ".join(f"{k} {v:.1f}" for k, v in list(report.thread_cpu_s.items())[:8]),
        f"engine ran on: {', '.join(report.engine_threads)}",
    ])
