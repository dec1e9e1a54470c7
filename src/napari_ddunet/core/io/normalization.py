"""Value ranges: the statistics of an image sample, the normalisation modes, and the training/input comparison.

The one owner of what the network sees of pixel values. Every mode is a per-band affine map: a *prescale*
``s(x) = (x - a) / b`` the mode defines, then the checkpoint's standardisation ``(s(x) - mean) / std`` with the
training set's statistics computed on prescaled values (the space called R below). So an inference run applies
one ``(x - offset) / scale`` per band, the same numbers in every subdomain, whatever the schedule.

Modes (recorded in the checkpoint by training, applied by inference):

- ``global``: ``s(x) = x`` (paper 001: raw values, the training set's mean and std);
- ``percentile``: ``s(x) = (x - p1) / (p99 - p1)``, p1 and p99 of *this image*, per band, from
  :func:`lattice_sample` (microscopy tools do this; no clipping);
- ``dtype``: ``s(x) = x / dtype max`` (255 for uint8, 65535 for uint16; floats are taken as already in 0..1).

At inference ``checkpoint`` (the default) applies the recorded mode; ``percentile`` or ``dtype`` on a model
trained otherwise maps the image onto the training data instead: percentile maps this image's p1..p99 onto the
training set's p1..p99 in R (recorded, else mean -/+ 2.326 std), dtype maps the image's dtype range onto the
training dtype's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ddunet.core.errors import DDUNetError

#: Modes a checkpoint records (how training prescaled its images).
MODES = ("global", "percentile", "dtype")
#: Choices at inference: ``checkpoint`` applies the recorded mode.
CHOICES = ("checkpoint", "percentile", "dtype")
#: The percentiles of the percentile mode and of the recorded value range.
LOW, HIGH = 1.0, 99.0
#: The normal distribution's 99th percentile in std units: the training range of a checkpoint that records
#: only mean and std is taken as mean -/+ this many std.
NORMAL_P99 = 2.3263478740408408
#: The lattice sample: LATTICE x LATTICE blocks of SIDE x SIDE pixels spread over the image (one chunk each).
LATTICE, SIDE = 6, 40
#: At most this many pixels per band enter the percentiles of a training set.
PERCENTILE_PIXELS = 1_000_000
#: Far apart: the sample's median more than FAR training ranges outside it, or its spread WIDE times wider or
#: narrower than the training data's.
FAR, WIDE = 1.0, 10.0
#: What a warning names as the fix.
FIX = "use --normalization percentile (normalization='percentile'; the widget's Normalisation) or rescale the image"


class NormalizationError(DDUNetError):
    """A normalisation that cannot be applied as asked (one line)."""


class ValueRangeWarning(UserWarning):
    """The input's values lie far from what the model was trained on, or the normalisation was overridden."""


@dataclass(frozen=True)
class BandStats:
    """Per-band statistics of a sample of pixel values, and the dtype they were stored as."""

    dtype: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    p1: tuple[float, ...]
    p99: tuple[float, ...]
    median: tuple[float, ...]
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    @property
    def bands(self) -> int:
        return len(self.mean)

    def record(self) -> dict[str, Any]:
        """What a store records of the input: dtype and the percentiles the run used."""
        return {"dtype": self.dtype, "p1": list(self.p1), "p99": list(self.p99)}


def dtype_max(dtype: Any) -> float:
    """The value a dtype's full range maps to 1: its largest integer, 1 for bool and floats (taken as 0..1)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def lattice_boxes(shape: tuple[int, int], lattice: int = LATTICE, side: int = SIDE) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of up to lattice**2 blocks evenly spread over ``shape``, corners included, no repeats."""
    height, width = shape
    bh, bw = min(side, height), min(side, width)
    n = max(lattice - 1, 1)
    ys = sorted({round(i * (height - bh) / n) for i in range(lattice)})
    xs = sorted({round(i * (width - bw) / n) for i in range(lattice)})
    return [(y, y + bh, x, x + bw) for y in ys for x in xs]


def lattice_sample(read: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels of the lattice blocks as float64 (C, N): cheap (one small read per block) and deterministic,
    so a resumed run and every schedule get the same numbers."""
    blocks = [np.asarray(read(*box), dtype=np.float64) for box in lattice_boxes(shape)]
    return np.concatenate([b.reshape(b.shape[0], -1) for b in blocks], axis=1)


def image_statistics(sources: Sequence[Any]) -> BandStats:
    """Statistics of the lattice sample of one image (an ImageSource) or of a stack's sampled planes."""
    values = np.concatenate([lattice_sample(s.read, s.shape) for s in sources], axis=1)
    return statistics(values, sources[0].dtype)


def statistics(values: np.ndarray, dtype: Any) -> BandStats:
    """Mean, population std, p1, p99, median, min and max of (C, N) float64 values, per band."""
    values = np.asarray(values, dtype=np.float64)
    low, high, median = np.percentile(values, [LOW, HIGH, 50.0], axis=1)
    return BandStats(str(np.dtype(dtype)), _floats(values.mean(axis=1)), _floats(values.std(axis=1)),
                     _floats(low), _floats(high), _floats(median), _floats(values.min(axis=1)),
                     _floats(values.max(axis=1)))


def pooled_statistics(blocks: Iterable[np.ndarray], dtype: Any,
                      percentile_pixels: int = PERCENTILE_PIXELS) -> BandStats:
    """Statistics of a training set given as (C, n) float64 blocks (already prescaled): mean and std from
    running sums over every value, percentiles from at most ``percentile_pixels`` of them (evenly strided)."""
    count, s1, s2, kept = 0, 0.0, 0.0, []
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        count += block.shape[1]
        s1 = s1 + block.sum(axis=1)
        s2 = s2 + (block * block).sum(axis=1)
        kept.append(block)
    values = np.concatenate(kept, axis=1)
    values = values[:, ::max(1, math.ceil(values.shape[1] / percentile_pixels))]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    low, high, median = np.percentile(values, [LOW, HIGH, 50.0], axis=1)
    return BandStats(str(np.dtype(dtype)), _floats(mean), _floats(std), _floats(low), _floats(high),
                     _floats(median), _floats(values.min(axis=1)), _floats(values.max(axis=1)))


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.atleast_1d(values))


def _width(stats: BandStats) -> np.ndarray:
    """p99 - p1 per band; a band whose percentiles coincide uses max - min, a constant band 1 (only shifted)."""
    width = np.asarray(stats.p99) - np.asarray(stats.p1)
    spread = np.asarray(stats.maximum) - np.asarray(stats.minimum)
    return np.where(width > 0, width, np.where(spread > 0, spread, 1.0))


def prescale(mode: str, stats: BandStats) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the mode's own prescale ``(x - a) / b`` for an image of these statistics (training uses it)."""
    bands = stats.bands
    if mode == "global":
        return np.zeros(bands), np.ones(bands)
    if mode == "dtype":
        return np.zeros(bands), np.full(bands, dtype_max(stats.dtype))
    if mode == "percentile":
        return np.asarray(stats.p1, dtype=np.float64), _width(stats)
    raise NormalizationError(f"unknown normalisation mode {mode!r}; use one of {', '.join(MODES)}")


def image_prescale(mode: str, read: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int],
                   dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of one training image's prescale, from the lattice sample an inference run of it would take
    (global mode reads one pixel, for the band count): training and inference normalise an image alike."""
    check_mode(mode)
    if mode == "global":
        bands = np.asarray(read(0, 1, 0, 1)).shape[0]
        return np.zeros(bands), np.ones(bands)
    return prescale(mode, statistics(lattice_sample(read, shape), dtype))


def check_mode(mode: str, choices: Sequence[str] = MODES, flag: str = "--normalization") -> str:
    if mode not in choices:
        raise NormalizationError(f"{flag} {mode!r} is not a normalisation mode; use one of {', '.join(choices)}")
    return mode


def trained_mode(norm: Any) -> str:
    """The mode a checkpoint's normalisation records; one written before modes existed used ``global``."""
    return getattr(norm, "mode", None) or "global"


def training_range(norm: Any) -> tuple[np.ndarray, np.ndarray]:
    """The training data's p1 and p99 in R, per band: recorded, else mean -/+ NORMAL_P99 std."""
    mean, std = np.asarray(norm.mean, dtype=np.float64), np.asarray(norm.std, dtype=np.float64)
    if getattr(norm, "p1", None) is not None and getattr(norm, "p99", None) is not None:
        return np.asarray(norm.p1, dtype=np.float64), np.asarray(norm.p99, dtype=np.float64)
    return mean - NORMAL_P99 * std, mean + NORMAL_P99 * std


@dataclass(frozen=True)
class Applied:
    """The normalisation a run applies: the network sees ``(x - offset) / scale`` per band."""

    mode: str                    # the prescale applied: global, percentile or dtype
    trained: str                 # the mode the checkpoint records
    offset: np.ndarray
    scale: np.ndarray
    image: BandStats
    checkpoint: dict[str, Any] | None   # the checkpoint's normalisation record

    @property
    def overridden(self) -> bool:
        return self.mode != self.trained

    def record(self) -> dict[str, Any] | None:
        """The store's ``normalization`` attribute: a run in the checkpoint's global mode records the checkpoint's
        statistics exactly as before modes existed (so older stores resume); others also the image's numbers."""
        if self.mode == "global" and not self.overridden:
            return self.checkpoint
        return {"mode": self.mode, "trained": self.checkpoint, "image": self.image.record(),
                "offset": [float(v) for v in self.offset], "scale": [float(v) for v in self.scale]}


def resolve(norm: Any, choice: str | None, stats: BandStats) -> Applied | None:
    """The normalisation of a run: ``choice`` (None or ``checkpoint``: the recorded mode) for a checkpoint whose
    normalisation is ``norm`` (None: the network sees raw values), on an image of statistics ``stats``."""
    choice = check_mode(choice or "checkpoint", CHOICES)
    if norm is None:
        if choice == "checkpoint":
            return None
        mean, std, trained, low, high, record = np.zeros(stats.bands), np.ones(stats.bands), "global", 0.0, 1.0, None
    else:
        mean, std = np.asarray(norm.mean, dtype=np.float64), np.asarray(norm.std, dtype=np.float64)
        trained, record = trained_mode(norm), norm.to_dict()
        low, high = training_range(norm)
    if len(mean) != stats.bands:
        raise NormalizationError(f"checkpoint normalisation has {len(mean)} channels, the image {stats.bands}")
    mode = trained if choice == "checkpoint" else choice
    if mode == trained:
        a, b = prescale(mode, stats)
    elif mode == "percentile":
        # this image's p1..p99 onto the training data's, in R
        b = _width(stats) / np.maximum(np.asarray(high - low, dtype=np.float64), np.finfo(np.float64).tiny)
        a = np.asarray(stats.p1) - low * b
    elif trained == "percentile" or norm is None:
        a, b = prescale("dtype", stats)
    else:
        # dtype onto a global model: the image dtype's range onto the training dtype's
        recorded = getattr(norm, "dtype", None)
        if recorded is None:
            raise NormalizationError("normalisation dtype needs the dtype the model was trained on, which this "
                                     "checkpoint does not record; use --normalization percentile")
        a, b = np.zeros(stats.bands), np.full(stats.bands, dtype_max(stats.dtype) / dtype_max(recorded))
    return Applied(mode, trained, a + mean * b, std * b, stats, record)


def compare(norm: Any, applied: Applied | None) -> str | None:
    """One line when the normalised sample lies far from the training data (or None): its median more than
    FAR training ranges outside the training p1..p99, its p1..p99 spread WIDE times wider, or its whole range
    WIDE times narrower; or, without a prescale, values beyond the training dtype's range."""
    if norm is None or applied is None:
        return None
    stats = applied.image
    mean, std = np.asarray(norm.mean, dtype=np.float64), np.asarray(norm.std, dtype=np.float64)
    low, high = ((np.asarray(v) - mean) / std for v in training_range(norm))
    width = np.maximum(high - low, 1.0)

    def z(values: tuple[float, ...]) -> np.ndarray:
        return (np.asarray(values) - applied.offset) / applied.scale

    median, spread = z(stats.median), z(stats.p99) - z(stats.p1)
    whole = z(stats.maximum) - z(stats.minimum)
    far = (median < low - FAR * width) | (median > high + FAR * width) | (spread > WIDE * width)
    far |= (whole > 0) & (whole < width / WIDE)
    recorded = getattr(norm, "dtype", None)
    beyond = None
    if recorded is not None and applied.mode == "global" and np.issubdtype(np.dtype(recorded), np.integer):
        beyond = np.asarray(stats.maximum) > dtype_max(recorded)
        far |= beyond
    bad = np.flatnonzero(far)
    if not bad.size:
        return None
    band = int(bad[0])
    t_low, t_high = training_range(norm)
    more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
    trained_on = f"{recorded} data, " if recorded else ""
    space = {"global": "", "dtype": " after dividing by the dtype's maximum",
             "percentile": " after percentile scaling"}[applied.mode]
    why = (f"values up to {_g(stats.maximum[band])} exceed the {recorded} range the model was trained on"
           if beyond is not None and beyond[band] else "its labels would be meaningless")
    return (f"the input's values lie far from what the model was trained on: band {band}{more} of the "
            f"{stats.dtype} image has median {_g(stats.median[band])} and p1..p99 {_g(stats.p1[band])}.."
            f"{_g(stats.p99[band])}, the training data ({trained_on}{applied.trained} normalisation) "
            f"p1..p99 {_g(t_low[band])}..{_g(t_high[band])}{space}; {why}; {FIX}")


def override_note(applied: Applied | None) -> str | None:
    """One line when the run's mode is not the one the model was trained with."""
    if applied is None or not applied.overridden:
        return None
    how = {"percentile": "each band's p1..p99 of this image mapped onto the training data's",
           "dtype": "the image dtype's range mapped onto the training data's"}.get(applied.mode, applied.mode)
    return (f"normalisation {applied.mode} ({how}) overrides the {applied.trained} normalisation the model was "
            "trained with")


def _g(value: float) -> str:
    return f"{value:.4g}"
