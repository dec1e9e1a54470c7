"""``napari-ddunet bench``: our engine against the monolithic pass, exact tiling, MONAI and the roofline."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_ddunet.core.errors import DDUNetError


class BenchError(DDUNetError):
    """Benchmark options that cannot work on this image size or machine."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure speed and peak memory against the roofline, the monolithic pass and MONAI",
        description="Run every contender in a fresh process on the reference model of paper 001 "
                    "(3-16-32-64-128-256, depth 4, F=64) and print throughput, peak memory, ratios and goals.",
    )
    parser.add_argument("--size", type=int, default=2048, help="image side for the contender table (default 2048)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="image sides for the time/memory scaling of the engine (default 2048 4096 8192)")
    parser.add_argument("--subdomain", type=int, default=512,
                        help="subdomain side; also the tile zone and MONAI roi (default 512, multiple of 16)")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "bf16"), default=["float32", "bf16"],
                        help="precisions of the engine to measure (default both)")
    parser.add_argument("--devices", nargs="+", default=["cpu"],
                        help="device types to measure: cpu and/or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per contender (default torch's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--quick", action="store_true",
                        help="one size, short roofline, no NCHW baseline, bf16 and several devices for the default "
                             "schedule only: a smoke test")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where test images and checkpoints go (default: a temporary folder, removed after)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per contender")
    parser.add_argument("--gui", action="store_true",
                        help="instead: the dock widget's run time over a headless run of the same request, the Run "
                             "click's latency and the event loop's gaps, on the Blue Marble sample with its bundled "
                             "model (--quick: a 512 x 1024 crop; needs a display)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --gui: measure this many times, headless and widget halves alternating, and "
                             "print each pair's ratio and their median (one pair is at the mercy of the load)")
    parser.add_argument("--budget", action="store_true",
                        help="instead: peak memory above the import baseline against --memory-budget, 64 MB to 2 GB, "
                             "2048^2 to 32768^2 and a 512 x 131072 strip, one process per case (--quick: three "
                             "small cases)")
    parser.set_defaults(run=run)


def _check(args: argparse.Namespace) -> list[int]:
    step = 16   # 2**depth of the reference model
    if args.subdomain < step or args.subdomain % step:
        raise BenchError(f"--subdomain must be a positive multiple of {step}, got {args.subdomain}")
    sizes = [args.size] if args.quick else sorted(set(args.sizes) | {args.size})
    for size in sizes:
        if size < args.subdomain or size % args.subdomain:
            raise BenchError(f"image side {size} is not a multiple of the subdomain side {args.subdomain}")
    for device in args.devices:
        if device.split(":")[0] not in ("cpu", "cuda"):
            raise BenchError(f"--devices takes cpu and/or cuda, got {device!r}")
    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {args.threads}")
    return sizes


def _engine_schedules() -> list[str]:
    """The schedules the engine offers (each is forced in turn)."""
    from napari_ddunet.core.inference import engine

    return list(engine.SCHEDULES)


def _device_sets(device_type: str) -> list[tuple[str, ...]]:
    """One device, and every device of the type (two CPU workers on a CPU)."""
    import torch

    if device_type == "cpu":
        return [("cpu",), ("cpu", "cpu")]
    count = torch.cuda.device_count()
    sets = [("cuda:0",)]
    if count > 1:
        sets.append(tuple(f"cuda:{i}" for i in range(count)))
    return sets


def _spec(name: str, kind: str, size: int, devices: tuple[str, ...], **kw: Any):
    from napari_ddunet.bench.runners import Spec

    kind_of_device = devices[0].split(":")[0]
    tag = kind_of_device if len(devices) == 1 else f"{kind_of_device} x{len(devices)}"
    return Spec(f"{name} {tag}", kind, size, devices=devices, **kw)


#: A forced schedule refuses a budget it does not fit; the contenders get what they need (--budget measures the bound).
FORCED_BUDGET = "1TB"


def _forced(schedule: str | None) -> dict[str, Any]:
    return {"schedule": schedule, "memory_budget": FORCED_BUDGET} if schedule else {}


def build_specs(args: argparse.Namespace, sizes: list[int], device_types: list[str], threads: int) -> list:
    """Every contender at ``--size``; the engine's default, wavefront and recompute at the other ``--sizes``."""
    specs = []
    common = {"subdomain": args.subdomain, "threads": threads}
    schedules: list[str | None] = [None, *_engine_schedules()]
    scaled = [None, "wavefront", "recompute"]     # the default choice and the bounded-memory schedules
    for dev in device_types:
        one = ("cuda:0",) if dev == "cuda" else ("cpu",)
        size = args.size
        specs.append(_spec("monolithic", "monolithic", size, one, **common))
        if not args.quick:
            specs.append(_spec("monolithic-nchw", "monolithic", size, one, channels_last=False, **common))
            if "bf16" in args.dtype:
                specs.append(_spec("monolithic", "monolithic", size, one, dtype="bf16", **common))
        for schedule in schedules:
            label = f"engine[{schedule or 'auto'}]"
            options: dict[str, Any] = _forced(schedule)
            if schedule == "streaming":
                # streaming has no exchange: it runs the C=N variant of the same weights (not exact)
                label, options["communicate"] = "engine[streaming, no exchange]", False
            for devices in _device_sets(dev):
                for dtype in args.dtype:
                    several = len(devices) > 1 or dtype != "float32"
                    # bf16 and several devices: one device set at a time; --quick only for the default
                    if (dtype == "float32" or len(devices) == 1) and not (args.quick and several and schedule):
                        specs.append(_spec(label, "engine", size, devices, dtype=dtype, options=options, **common))
        specs.append(_spec("unet-monolithic", "unet-monolithic", size, one, **common))
        specs.append(_spec("tiled-unet", "tiled", size, one, **common))
        specs.append(_spec("monai", "monai", size, one, **common))
        for other in sizes:
            for schedule in scaled if other != size else []:
                if schedule is None or schedule in schedules:
                    options = _forced(schedule)
                    specs.append(_spec(f"engine[{schedule or 'auto'}]", "engine", other, one, options=options,
                                       **common))
    return specs


def run_gui(args: argparse.Namespace) -> int:
    """``--gui``: one measurement of the widget against a headless run (see napari_ddunet.bench.gui)."""
    from napari_ddunet.bench import gui
    from napari_ddunet.core.checkpoints.bundled import bundled_models

    devices = tuple(args.devices)
    if any(d.split(":")[0] not in ("cpu", "cuda") for d in devices):
        raise BenchError(f"--devices takes cpu and/or cuda, got {' '.join(devices)}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.repeat < 1:
        raise BenchError(f"--repeat must be at least 1, got {args.repeat}")
    name, image = gui.bluemarble_image(args.quick)
    checkpoint = bundled_models()[gui.BUNDLED_MODEL]
    reports = [gui.measure(image, name, str(checkpoint), devices, timeout_s=args.timeout) for _ in range(args.repeat)]
    if args.json:
        print(json.dumps(reports[0].to_dict() if args.repeat == 1 else [r.to_dict() for r in reports], indent=1))
        return 0
    print("\n\n".join(gui.format_report(report) for report in reports))
    if args.repeat > 1:
        ratios = [report.ratio for report in reports]
        print(f"\nwidget / headless per pair: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {float(np.median(ratios)):.2f} x")
    return 0


def run_budget(args: argparse.Namespace) -> int:
    """``--budget``: the memory bound measured (see napari_ddunet.bench.budget)."""
    from napari_ddunet.bench import budget
    from napari_ddunet.bench.report import machine_info
    from napari_ddunet.bench.runners import default_threads

    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {args.threads}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ddunet-budget-"))
    started = time.perf_counter()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        machine = machine_info(args.threads or default_threads())
        results = budget.run_table(workdir, args.quick, args.threads, args.timeout, log=sys.stderr)
        if args.json:
            print(json.dumps({"machine": machine, "results": [r.to_dict() for r in results],
                              "seconds_total": time.perf_counter() - started}, indent=1, default=str))
        else:
            print(budget.format_table(results, machine))
            print(f"total bench time: {time.perf_counter() - started:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    if args.gui:
        return run_gui(args)
    if args.budget:
        return run_budget(args)

    from napari_ddunet.bench.flops import count_flops
    from napari_ddunet.bench.report import evaluate, format_report, machine_info
    from napari_ddunet.bench.roofline import matmul_rate
    from napari_ddunet.bench.runners import REFERENCE_CONFIG, prepare, run_isolated
    from napari_ddunet.core.network.config import ModelConfig
    from napari_ddunet.core.network.model import DDUNet

    sizes = _check(args)
    threads = args.threads or torch.get_num_threads()
    notes: list[str] = []
    device_types = []
    for device in dict.fromkeys(d.split(":")[0] for d in args.devices):
        if device == "cuda" and not torch.cuda.is_available():
            notes.append("cuda requested but torch.cuda.is_available() is False: GPU numbers are not available")
            continue
        device_types.append(device)
    if not device_types:
        raise BenchError("none of the requested --devices is available on this machine")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ddunet-bench-"))
    started = time.perf_counter()
    try:
        report: dict[str, Any] = {"machine": machine_info(threads)}
        torch.set_num_threads(threads)
        prepare(workdir, sizes)
        config = ModelConfig(**REFERENCE_CONFIG)
        flops = count_flops(DDUNet(config), (args.subdomain, args.subdomain),
                            (args.size // args.subdomain,) * 2)
        report["model"] = f"{config.notation}, channels 3-16-32-64-128-256, random He weights, eval mode"
        report["flops"] = {"conv_flops_per_pixel": flops.conv_flops_per_pixel,
                           "elementwise_per_pixel": flops.elementwise_per_pixel}
        roofline = []
        for dev in device_types:
            for dtype in ("float32", "bf16"):
                # --quick is a smoke run: 512^2 matmuls, since CPUs without bf16 units take minutes on 2048^2 in bf16
                rate = matmul_rate(dtype, "cuda:0" if dev == "cuda" else "cpu", seconds=0.3 if args.quick else 1.0,
                                   size=512 if args.quick else None)
                roofline.append({**rate.__dict__, "megapixels_per_s": rate.gflops * 1e3 / flops.conv_flops_per_pixel})
        report["roofline"] = roofline
        results = []
        specs = build_specs(args, sizes, device_types, threads)
        for i, spec in enumerate(specs, 1):
            result = run_isolated(spec, workdir, timeout=args.timeout)
            status = result.error or f"{result.seconds:.2f} s, {result.peak_rss_bytes / 2**20:.0f} MiB peak"
            print(f"[{i}/{len(specs)}] {spec.name} {spec.size}^2 {spec.dtype}: {status}", file=sys.stderr, flush=True)
            results.append(result)
        report["results"] = [r.to_dict() for r in results]
        report["rows"], report["evaluations"] = {}, []
        for dev in device_types:
            extra, goals = evaluate(results, args.size, {r["dtype"]: r["megapixels_per_s"] for r in roofline
                                                         if r["device"].split(":")[0] == dev}, device=dev,
                                    threads=threads if dev == "cpu" else None)
            report["rows"].update(extra["rows"])
            report["evaluations"].append({"device": dev, "headline": extra["headline"],
                                          "goals": [g.to_dict() for g in goals]})
        report["notes"] = notes
        report["seconds_total"] = time.perf_counter() - started
        if args.json:
            print(json.dumps(report, indent=1, default=str))
        else:
            print(format_report(report))
            print(f"total bench time: {report['seconds_total']:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
