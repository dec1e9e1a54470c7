"""The machine's measured dense matrix-multiply rate: the ceiling any convolution can reach.

A square matmul is the best case for the BLAS/oneDNN kernels that convolutions lower to, so
``rate / FLOPs per pixel`` is the throughput (pixels per second) a network could reach if every
layer ran at matmul speed: the roofline we compare the engine against.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class MatmulRate:
    dtype: str
    device: str
    size: int            # side of the square matrices
    repeats: int
    seconds: float
    gflops: float        # measured rate, GFLOP/s


def _timed(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    return time.perf_counter() - start


def matmul_rate(
    dtype: str = "float32", device: str = "cpu", seconds: float = 1.0, size: int | None = None
) -> MatmulRate:
    """Best-of-three GFLOP/s of ``size``-square matmuls, repeated to take about ``seconds``.

    The size defaults to 2048 on CPU (large enough to be compute bound, small enough to stay
    in the caches' sweet spot of the blocked kernels) and 8192 on CUDA.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    n = size or (8192 if torch.device(device).type == "cuda" else 2048)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=DTYPES[dtype])
    with torch.inference_mode():
        _timed(a, b, 1)                               # warm-up: thread pool, kernel selection
        first = _timed(a, b, 1)
        repeats = max(1, math.ceil(seconds / 3 / max(first, 1e-6)))
        best = min(_timed(a, b, repeats) for _ in range(3))
    flops = 2.0 * n**3 * repeats
    return MatmulRate(dtype, str(device), n, repeats, best, flops / best / 1e9)
