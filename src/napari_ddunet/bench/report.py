"""Turn contender results into ratios, goal checks and a plain-text table."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ddunet.bench.runners import Result

MIB = 1024 * 1024


@dataclass(frozen=True)
class Goal:
    name: str
    value: float | None
    target: float
    higher_is_better: bool = True
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.target,
                "higher_is_better": self.higher_is_better, "met": self.met, "note": self.note}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on; printed above every table."""
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "torch_threads": threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "memory_bytes": _memory_total(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    return info


def agreement(labels_a: str | None, labels_b: str | None) -> float | None:
    """Fraction of pixels with the same label in two saved label maps."""
    if not labels_a or not labels_b:
        return None
    a, b = np.load(labels_a, mmap_mode="r"), np.load(labels_b, mmap_mode="r")
    if a.shape != b.shape:
        return None
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def _fastest(results: Sequence[Result]) -> Result | None:
    timed = [r for r in results if r.seconds]
    return min(timed, key=lambda r: r.seconds) if timed else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def device_type(result: Result) -> str:
    return result.devices[0].split(":")[0]


def evaluate(results: Sequence[Result], size: int, roofline_mpx: dict[str, float],
             device: str = "cpu", threads: int | None = None) -> tuple[dict[str, Any], list[Goal]]:
    """Agreement of every row with its reference, the headline ratios and the issue-7 goals.

    Rows are named ``"<contender> <device type>[ xN]"``; the references are the float32 rows
    ``"monolithic <device>"`` (for DDU-Net rows) and ``"unet-monolithic <device>"`` (U-Net rows).
    """
    ok = [r for r in results if r.error is None]

    def row(name: str, size_: int, dtype: str = "float32") -> Result | None:
        found = [r for r in ok if r.name == name and r.size == size_ and r.dtype == dtype]
        return found[0] if found else None

    extra: dict[str, Any] = {}
    for r in ok:
        base = "monolithic" if r.kind in ("monolithic", "engine") else "unet-monolithic"
        ref = row(f"{base} {device_type(r)}", r.size)
        extra[f"{r.name}|{r.size}|{r.dtype}"] = {
            "agreement": agreement(r.labels_path, ref.labels_path) if ref else None,
            "reference": ref.name if ref else None,
        }

    here = [r for r in ok if device_type(r) == device and r.size == size and r.exact]
    engine = _fastest([r for r in here if r.kind == "engine" and r.dtype == "float32"])
    engine_bf16 = _fastest([r for r in here if r.kind == "engine" and r.dtype == "bf16"])
    # bf16 is compared with float32 on the same schedule and devices
    same_fp32 = row(engine_bf16.name, size) if engine_bf16 else None
    mono = row(f"monolithic {device}", size)
    monai = row(f"monai {device}", size)
    engine_mpx = engine.megapixels_per_s if engine else None
    bf16_mpx = engine_bf16.megapixels_per_s if engine_bf16 else None
    headline: dict[str, Any] = {
        "engine_row": engine.name if engine else None,
        "engine_bf16_row": engine_bf16.name if engine_bf16 else None,
        "engine_vs_monolithic": _ratio(engine_mpx, mono.megapixels_per_s if mono else None),
        "engine_vs_roofline": _ratio(engine_mpx, roofline_mpx.get("float32")),
        # load-robust variant: pixels per CPU-second of the run against the roofline per thread
        "engine_vs_roofline_per_cpu_second": _ratio(
            engine.size**2 / engine.cpu_seconds / 1e6 if engine and engine.cpu_seconds else None,
            roofline_mpx["float32"] / threads if roofline_mpx.get("float32") and threads else None),
        "engine_vs_monai": _ratio(engine_mpx, monai.megapixels_per_s if monai else None),
        "bf16_vs_float32": _ratio(bf16_mpx, same_fp32.megapixels_per_s if same_fp32 else None),
        "bf16_agreement": (extra[f"{engine_bf16.name}|{size}|bf16"]["agreement"] if engine_bf16 else None),
        "bf16_vs_roofline": _ratio(bf16_mpx, roofline_mpx.get("bf16")),
    }
    scaling: dict[str, dict[int, dict[str, Any]]] = {}
    for r in sorted((r for r in ok if r.kind == "engine" and r.dtype == "float32" and r.exact
                     and device_type(r) == device), key=lambda r: r.size):
        scaling.setdefault(r.name, {})[r.size] = {"seconds": r.seconds, "peak_rss_bytes": r.peak_rss_bytes,
                                                  "baseline_rss_bytes": r.baseline_rss_bytes, "schedule": r.schedule}
    scaling = {name: by_size for name, by_size in scaling.items() if len(by_size) > 1}
    default = f"engine[auto] {device}"
    memory_row = default if default in scaling else next(iter(scaling), None)
    memory_growth = smallest = largest = None
    if memory_row:
        by_size = scaling[memory_row]
        smallest, largest = min(by_size), max(by_size)
        memory_growth = _ratio(by_size[largest]["peak_rss_bytes"], by_size[smallest]["peak_rss_bytes"])
    headline["scaling"] = scaling
    headline["memory_row"] = memory_row
    headline["memory_growth"] = memory_growth

    goals = [
        Goal("engine / monolithic throughput", headline["engine_vs_monolithic"], 0.9),
        Goal("engine / float32 matmul roofline", headline["engine_vs_roofline"], 0.6),
        Goal("engine / float32 roofline per CPU-second (load-robust variant)",
             headline["engine_vs_roofline_per_cpu_second"], 0.6),
        Goal("engine / MONAI sliding window (25% overlap)", headline["engine_vs_monai"], 1.5),
        Goal(f"engine peak memory {largest}^2 / {smallest}^2" if memory_row else "engine peak memory growth",
             memory_growth, 1.3, higher_is_better=False,
             note=f"({memory_row})" if memory_growth is not None else "(needs two sizes: --sizes)"),
        Goal("engine bf16 / float32 throughput (same schedule)", headline["bf16_vs_float32"], 1.7,
             note=f"({engine_bf16.name})" if engine_bf16 else ""),
        Goal("engine bf16 argmax agreement with monolithic float32", headline["bf16_agreement"], 0.995),
    ]
    if device == "cuda":
        goals.append(Goal("engine bf16 throughput on one GPU (gigapixel/s)", bf16_mpx and bf16_mpx / 1000, 1.0))
    return {"rows": extra, "headline": headline}, goals


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    """The whole report as text: machine, roofline, per-row table, goals."""
    m = report["machine"]
    lines = [
        "napari-ddunet bench",
        f"machine: {m['cpu']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, "
        f"{_fmt(m['memory_bytes'] and m['memory_bytes'] / 2**30, '.1f')} GiB RAM, "
        f"torch {m['torch']} ({m['torch_threads']} threads, {m['cpu_capability']}), python {m['python']}",
        f"GPUs: {', '.join(m['gpus']) if m['gpus'] else 'none (GPU numbers not available on this machine)'}",
        f"load average at start: {m['load_average']}",
    ]
    f = report["flops"]
    lines.append(f"model: {report['model']}; {f['conv_flops_per_pixel'] / 1e3:.1f} kFLOP/pixel in convolutions "
                 f"(+{f['elementwise_per_pixel']:.0f} elementwise ops/pixel)")
    for rate in report["roofline"]:
        lines.append(f"roofline {rate['device']} {rate['dtype']}: {rate['gflops']:.1f} GFLOP/s matmul "
                     f"({rate['size']}^2, {rate['repeats']} x) -> {rate['megapixels_per_s']:.3f} Mpx/s")
    header = (f"{'contender':<38} {'size':>5} {'dtype':>7} {'s':>8} {'CPU s':>7} {'Mpx/s':>7} {'x mono':>7} "
              f"{'x roof':>7} {'peak MiB':>9} {'base MiB':>9} {'agree %':>7}")
    lines += ["", header, "-" * len(header)]
    roofs = {(r["device"].split(":")[0], r["dtype"]): r["megapixels_per_s"] for r in report["roofline"]}
    monos = {(r["size"], r["devices"][0].split(":")[0]): r["megapixels_per_s"] for r in report["results"]
             if r["name"].split()[0] == "monolithic" and r["error"] is None and r["dtype"] == "float32"}
    for r in report["results"]:
        if r["error"]:
            lines.append(f"{r['name']:<38} {r['size']:>5} {r['dtype']:>7} error: {r['error']}")
            continue
        roof = roofs.get((r["devices"][0].split(":")[0], r["dtype"]))
        row = report["rows"].get(f"{r['name']}|{r['size']}|{r['dtype']}", {})
        agree = row.get("agreement")
        lines.append(
            f"{r['name']:<38} {r['size']:>5} {r['dtype']:>7} {r['seconds']:>8.2f} "
            f"{_fmt(r.get('cpu_seconds'), '.1f'):>7} "
            f"{r['megapixels_per_s']:>7.3f} "
            f"{_fmt(_ratio(r['megapixels_per_s'], monos.get((r['size'], r['devices'][0].split(':')[0]))), '.2f'):>7} "
            f"{_fmt(_ratio(r['megapixels_per_s'], roof), '.2f'):>7} "
            f"{r['peak_rss_bytes'] / MIB:>9.0f} {(r['baseline_rss_bytes'] or 0) / MIB:>9.0f} "
            f"{_fmt(None if agree is None else 100 * agree, '.3f', '-'):>7}"
            + (f"  GPU peak {r['peak_device_bytes'] / MIB:.0f} MiB" if r.get("peak_device_bytes") else "")
            + (f"  [{r['schedule']}]" if r.get("schedule") else "")
        )
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    for evaluation in report["evaluations"]:
        h = evaluation["headline"]
        lines += ["", f"{evaluation['device']}: headline engine row: {h['engine_row']}"]
        for name, by_size in h["scaling"].items():
            lines.append(f"  scaling {name}: " + "; ".join(
                f"{s}^2: {v['seconds']:.1f} s, {v['peak_rss_bytes'] / MIB:.0f} MiB peak [{v['schedule']}]"
                for s, v in by_size.items()))
        lines.append("  goals:")
        for g in evaluation["goals"]:
            verdict = {True: "MET", False: "MISSED", None: "n/a"}[g["met"]]
            cmp = ">=" if g["higher_is_better"] else "<="
            lines.append(f"    {verdict:<6} {g['name']}: {_fmt(g['value'], '.3f')} (goal {cmp} {g['target']})"
                         + (f" {g['note']}" if g["note"] else ""))
    return "\n".join(lines)
