"""The matmul roofline returns a real rate; no timing assertions."""

from __future__ import annotations

import math

import pytest

from napari_ddunet.bench.roofline import matmul_rate


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_matmul_rate_is_positive_and_finite(dtype: str) -> None:
    rate = matmul_rate(dtype, seconds=0.02, size=64)
    assert rate.dtype == dtype and rate.size == 64 and rate.repeats >= 1
    assert rate.seconds > 0
    assert math.isfinite(rate.gflops) and rate.gflops > 0
    assert rate.gflops == pytest.approx(2 * 64**3 * rate.repeats / rate.seconds / 1e9)


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        matmul_rate("float8")
