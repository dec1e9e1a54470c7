"""Each contender runs in a fresh process so its time and peak memory are its own.

The parent (:func:`prepare`) writes the reference model (paper 001 Table V: 3-16-32-64-128-256,
depth 4, F=64, random He weights, eval mode), the same encoder/decoder as a plain U-Net
(F=0) for the tiling contenders, and a deterministic smooth RGB test image as a zarr store.
:func:`run_isolated` then starts a ``spawn`` child per contender. The child loads the model,
warms up on one small input, resets the kernel's peak-RSS counter, and times image store ->
labels end to end; the peak resident memory of that run (``VmHWM``) and the labels come back.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import resource
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

R = TypeVar("R")

#: paper 001 Table V: RGB in, 3 classes, 16-32-64-128-256 channels, F = 64 communicated features.
REFERENCE_CONFIG = {"in_channels": 3, "num_classes": 3, "depth": 4, "base_channels": 16, "comm_features": 64}
MONAI_OVERLAP = 0.25
SEED = 0


@dataclass(frozen=True)
class Spec:
    """One contender on one image size; everything a fresh child process needs."""

    name: str                        # row label, unique within a run
    kind: str                        # "monolithic" | "unet-monolithic" | "engine" | "tiled" | "monai"
    size: int                        # image side in pixels (square image)
    subdomain: int                   # subdomain side (engine, monolithic grid, tiles, MONAI roi)
    dtype: str = "float32"           # "float32" | "bf16"
    devices: tuple[str, ...] = ("cpu",)
    threads: int | None = None       # torch intra-op threads in the child; None keeps torch's default
    channels_last: bool = True
    options: dict[str, Any] = field(default_factory=dict)   # passed through to the contender


@dataclass
class Result:
    name: str
    kind: str
    size: int
    dtype: str
    devices: tuple[str, ...]
    seconds: float | None = None
    cpu_seconds: float | None = None        # user + system CPU time of the child during the run (all threads)
    megapixels_per_s: float | None = None
    peak_rss_bytes: int | None = None       # peak resident memory of the timed run (whole process)
    baseline_rss_bytes: int | None = None   # resident memory right before it (python, torch, model)
    peak_device_bytes: int | None = None    # CUDA max_memory_allocated, when on a GPU
    schedule: str | None = None             # what the engine reports it ran
    labels_path: str | None = None
    exact: bool = True                      # False: computes a different function (no exchange)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- inputs shared by every contender --------------------------------------------------------------

def image_path(workdir: Path, size: int) -> Path:
    return workdir / f"image_{size}.zarr"


def write_test_image(path: Path, size: int, block: int = 512) -> None:
    """A smooth, deterministic RGB float32 image (C, H, W) with mild noise, written row block by row block.

    Smooth structure rather than white noise, so that the network's argmax is not decided by
    near-ties everywhere and the bf16/float32 agreement means something.
    """
    import zarr

    chunk = min(block, size)
    store = zarr.create_array(str(path), shape=(3, size, size), chunks=(3, chunk, chunk), dtype="float32",
                              overwrite=True)
    xs = np.arange(size, dtype=np.float32) / size
    freqs = ((3.0, 5.0), (7.0, 2.0), (4.0, 9.0))
    for y0 in range(0, size, chunk):
        ys = (np.arange(y0, min(y0 + chunk, size), dtype=np.float32) / size)[:, None]
        rng = np.random.default_rng([SEED, y0])
        rows = []
        for c, (fy, fx) in enumerate(freqs):
            phase = 2 * np.pi * (fy * ys + fx * xs[None, :])
            value = 0.5 + 0.3 * np.sin(phase + c) * np.cos(2 * np.pi * (fx + fy) * ys * xs[None, :])
            rows.append(value + 0.05 * rng.standard_normal(value.shape, dtype=np.float32))
        store[:, y0:y0 + ys.shape[0], :] = np.stack(rows).astype(np.float32)


def prepare(workdir: Path, sizes: list[int]) -> dict[str, Path]:
    """Write both checkpoints and one test image per size into ``workdir``; returns their paths."""
    import torch

    from napari_ddunet.core.checkpoints.format import save_checkpoint
    from napari_ddunet.core.network.config import ModelConfig
    from napari_ddunet.core.network.model import DDUNet

    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    ddunet = DDUNet(ModelConfig(**REFERENCE_CONFIG)).eval()
    unet = DDUNet(ModelConfig(**{**REFERENCE_CONFIG, "comm_features": 0})).eval()
    shared = {k: v for k, v in ddunet.state_dict().items() if not k.startswith("comm.")}
    unet.load_state_dict(shared)
    paths = {"ddunet": workdir / "ddunet.pt", "unet": workdir / "unet.pt"}
    save_checkpoint(paths["ddunet"], ddunet)
    save_checkpoint(paths["unet"], unet)
    for size in sizes:
        path = image_path(workdir, size)
        if not path.exists():
            write_test_image(path, size)
        paths[f"image_{size}"] = path
    return paths


# -- memory accounting (Linux /proc, with a getrusage fallback) ------------------------------------

def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so warm-up does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss() -> int:
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the contenders (run inside the child) ---------------------------------------------------------

def _autocast(device: str, dtype: str):
    import contextlib

    import torch

    if dtype == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare_model(model, spec: Spec):
    import torch

    model = model.to(spec.devices[0]).eval()
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _whole_image(spec: Spec, image) -> Any:
    import torch

    x = torch.from_numpy(np.asarray(image[...]))[None].to(spec.devices[0])
    return x.contiguous(memory_format=torch.channels_last) if spec.channels_last else x


def _labels(logits) -> np.ndarray:
    import torch

    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _run_monolithic(spec: Spec, model, image) -> tuple[np.ndarray, str | None]:
    """The whole image in one forward pass; DDU-Net on the subdomain grid, U-Net on a 1x1 grid."""
    import torch

    grid = (spec.size // spec.subdomain,) * 2 if spec.kind == "monolithic" else (1, 1)
    model = _prepare_model(model, spec)
    x = _whole_image(spec, image)
    with torch.inference_mode(), _autocast(spec.devices[0], spec.dtype):
        return _labels(model(x, grid=grid)), None


def _run_monai(spec: Spec, model, image) -> tuple[np.ndarray, str | None]:
    """MONAI's sliding window, 25% overlap, Gaussian blending, roi = our subdomain size."""
    import torch
    from monai.inferers import sliding_window_inference

    model = _prepare_model(model, spec)
    x = _whole_image(spec, image)
    batch = int(spec.options.get("sw_batch_size", 4))
    with torch.inference_mode(), _autocast(spec.devices[0], spec.dtype):
        logits = sliding_window_inference(x, (spec.subdomain, spec.subdomain), batch, model,
                                          overlap=MONAI_OVERLAP, mode="gaussian")
    return _labels(logits), None


def _run_tiled(spec: Spec, model, image) -> tuple[np.ndarray, str | None]:
    """Exact tiled plain U-Net (paper 004): zones of ``subdomain`` pixels plus the exact halo each side."""
    import torch

    from napari_ddunet.core.analysis.tiling import tiled_unet_forward, unet_halo

    model = _prepare_model(model, spec)
    x = _whole_image(spec, image)
    tile = spec.subdomain + 2 * unet_halo(model.config)
    with torch.inference_mode(), _autocast(spec.devices[0], spec.dtype):
        return _labels(tiled_unet_forward(model, x, tile)), None


def _run_engine(spec: Spec, model, image_store: Path, workdir: Path) -> tuple[Any, str | None]:
    import torch

    from napari_ddunet.core.inference.engine import segment

    # overwrite replaces only an earlier bench run's store: anything else of that name in a --workdir is refused
    output = workdir / f"out_{_key(spec)}.zarr"
    dtype = torch.bfloat16 if spec.dtype == "bf16" else torch.float32
    result = segment(str(image_store), model, subdomain_size=(spec.subdomain, spec.subdomain),
                     devices=list(spec.devices), output=str(output), channel_axis=0, dtype=dtype,
                     return_result=True, overwrite=output.exists(), **spec.options)
    return result.labels, result.schedule


def _key(spec: Spec) -> str:
    """A file-name-safe key unique per (contender, size, dtype)."""
    name = "".join(ch if ch.isalnum() else "_" for ch in spec.name)
    return f"{name}_{spec.size}_{spec.dtype}"


def _warm_up(spec: Spec, model, workdir: Path) -> None:
    """One small run of the same code path: thread pools, oneDNN kernels and lazy imports."""
    small = Spec(**{**asdict(spec), "name": spec.name + "-warmup", "size": 2 * spec.subdomain})
    store = workdir / f"warmup_{small.size}.zarr"
    if not store.exists():
        write_test_image(store, small.size)
    _dispatch(small, model, store, workdir)
    shutil.rmtree(workdir / f"out_{_key(small)}.zarr", ignore_errors=True)


def _dispatch(spec: Spec, model, store: Path, workdir: Path) -> tuple[Any, str | None]:
    import zarr

    if spec.kind == "engine":
        return _run_engine(spec, model, store, workdir)
    image = zarr.open_array(str(store), mode="r")
    runner = {"monolithic": _run_monolithic, "unet-monolithic": _run_monolithic,
              "monai": _run_monai, "tiled": _run_tiled}[spec.kind]
    return runner(spec, model, image)


def _child(spec: Spec, workdir: str, out: mp.Queue) -> None:
    result = _failed(spec, None)
    try:
        import torch

        from napari_ddunet.core.checkpoints.format import load_checkpoint

        if spec.threads:
            torch.set_num_threads(spec.threads)
        work = Path(workdir)
        checkpoint = work / ("ddunet.pt" if spec.kind in ("monolithic", "engine") else "unet.pt")
        model = load_checkpoint(checkpoint)
        _warm_up(spec, model, work)
        cuda = [torch.device(d) for d in spec.devices if torch.device(d).type == "cuda"]
        for device in cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        _reset_peak_rss()
        result.baseline_rss_bytes = _proc_status("VmRSS")
        cpu_start = _cpu_time()
        start = time.perf_counter()
        labels, result.schedule = _dispatch(spec, model, image_path(work, spec.size), work)
        for device in cuda:
            torch.cuda.synchronize(device)
        result.seconds = time.perf_counter() - start
        result.cpu_seconds = _cpu_time() - cpu_start
        result.peak_rss_bytes = _peak_rss()
        if cuda:
            result.peak_device_bytes = max(torch.cuda.max_memory_allocated(d) for d in cuda)
        result.megapixels_per_s = spec.size**2 / result.seconds / 1e6
        labels_file = work / f"labels_{_key(spec)}.npy"
        np.save(labels_file, np.asarray(labels[...] if not isinstance(labels, np.ndarray) else labels))
        result.labels_path = str(labels_file)
        shutil.rmtree(work / f"out_{_key(spec)}.zarr", ignore_errors=True)
    except Exception as error:
        last = traceback.extract_tb(error.__traceback__)[-1]
        result.error = f"{type(error).__name__}: {error} ({Path(last.filename).name}:{last.lineno})"
    out.put(result)


def _failed(spec: Spec, message: str | None) -> Result:
    exact = spec.options.get("communicate") is not False
    return Result(spec.name, spec.kind, spec.size, spec.dtype, spec.devices, exact=exact, error=message)


def run_in_child(target: Callable[..., None], args: tuple, timeout: float, failed: Callable[[str], R]) -> R:
    """Run ``target(*args, queue)`` in a fresh ``spawn`` process and return what it puts on the queue;
    a crash or a timeout becomes ``failed(reason)``. Every bench case runs this way, so that one case's
    memory and threads never count in another's numbers."""
    context = mp.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=target, args=(*args, out), daemon=True)
    process.start()
    deadline = time.monotonic() + timeout
    result: R | None = None
    while result is None:
        try:
            result = out.get(timeout=1.0)
        except queue_module.Empty:
            if not process.is_alive():
                try:
                    result = out.get(timeout=2.0)
                except queue_module.Empty:
                    result = failed(f"child exited with code {process.exitcode} without a result "
                                    "(killed for memory?)")
            elif time.monotonic() > deadline:
                process.kill()
                result = failed(f"no result within {timeout:.0f} s")
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
        process.join()
    return result


def run_isolated(spec: Spec, workdir: Path, timeout: float = 900.0) -> Result:
    """Run one contender in a fresh ``spawn`` process; a crash or timeout becomes an error row."""
    return run_in_child(_child, (spec, str(workdir)), timeout, lambda reason: _failed(spec, reason))


def default_threads() -> int:
    import torch

    return torch.get_num_threads() or os.cpu_count() or 1
