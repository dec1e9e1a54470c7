"""Peak memory of the engine at a fixed budget as the image grows (2048^2 .. 8192^2 by default).

Each size runs in a fresh subprocess that segments a zarr image on disk into a zarr store and reports
its peak resident set size (``ru_maxrss``) and the RSS it had before segmenting (torch, model, imports).
The claim checked: peak memory is bounded by the budget, not by the image, so it stays flat
(within 30 %) from the smallest to the largest image.

    python benchmarks/memory_scaling.py [--sizes 2048 4096 8192] [--budget 128MB] [--subdomain 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    """Segment one image and print a JSON line with the measurements."""
    import dask.array  # noqa: F401  (imported before the baseline is taken, like everything the engine loads)
    import torch
    import zarr

    from napari_ddunet import DDUNet, ModelConfig
    from napari_ddunet.core.inference.engine import segment

    zarr.open_array(args.image, mode="r")

    torch.manual_seed(0)
    model = DDUNet(ModelConfig(in_channels=1, num_classes=3, depth=args.depth, base_channels=args.base,
                               comm_features=16, dropout=0.0)).eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = segment(args.image, model, subdomain_size=(args.subdomain, args.subdomain), output=args.output,
                     memory_budget=args.budget, devices=["cpu"], overwrite=True, return_result=True)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"schedule": result.schedule, "grid": result.grid, "before": before, "peak": peak,
                      "seconds": elapsed}))


def make_image(path: Path, size: int) -> None:
    """A float32 zarr image written band by band, so this process never holds it whole either."""
    import numpy as np
    import zarr

    array = zarr.create_array(str(path), shape=(size, size), chunks=(512, 512), dtype="f4", overwrite=True)
    rng = np.random.default_rng(size)
    for y in range(0, size, 512):
        array[y:y + 512] = rng.normal(size=(min(512, size - y), size)).astype("f4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--budget", default="128MB")
    parser.add_argument("--subdomain", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="where the test images go (default: a temp folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = []
        for size in args.sizes:
            image = Path(tmp) / f"image{size}.zarr"
            make_image(image, size)
            cmd = [sys.executable, __file__, "--child", "--image", str(image), "--output", str(Path(tmp) / "out.zarr"),
                   "--budget", args.budget, "--subdomain", str(args.subdomain), "--depth", str(args.depth),
                   "--base", str(args.base)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if proc.returncode:
                sys.exit(f"size {size} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["size"] = size
            rows.append(row)
            print(f"{size:>6}^2  grid {row['grid'][0]}x{row['grid'][1]:<4} schedule {row['schedule']:<10} "
                  f"peak {row['peak'] / 2**20:8.1f} MiB  (engine adds {(row['peak'] - row['before']) / 2**20:7.1f} MiB)"
                  f"  {row['seconds']:7.1f} s", flush=True)
            shutil.rmtree(image)
    first, last = rows[0], rows[-1]
    print(f"budget {args.budget}: peak RSS ratio {last['size']}^2 / {first['size']}^2 = "
          f"{last['peak'] / first['peak']:.2f}; engine-added memory ratio "
          f"{(last['peak'] - last['before']) / max(1, first['peak'] - first['before']):.2f} "
          f"(image area ratio {(last['size'] / first['size']) ** 2:.0f})")


if __name__ == "__main__":
    main()
