"""In-memory training data: napari layers' ``.data`` (numpy, dask, zarr) and their painted, possibly sparse labels.

Crops are drawn where the labels are: each training crop is placed around a labelled pixel chosen at
random, so a few strokes on a large image are seen in every epoch (a uniform crop would rarely hit them).

Validation rule: the crop-sized tiles covering every labelled pixel, i.e. the training pixels themselves.
Painted strokes are too few to hold some out without starving the training, so best.pt is the epoch that
fits the painted pixels best; the checkpoint's training args say ``validation: training pixels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.io.images import open_image, open_levels
from training import datasets
from training.train import TrainingError

#: What the checkpoint's training args record as the validation split of an in-memory run.
VALIDATION = "training pixels"
#: At most this many labelled pixel positions per image are kept to centre crops on (dense labels).
MAX_POINTS = 200_000


@dataclass(frozen=True)
class PaintedImage:
    """One image (H, W, C) read lazily through the package's opener and its (H, W) integer labels."""

    image: datasets._ChannelsLast
    labels: np.ndarray
    points: np.ndarray   # (n, 2) labelled (y, x) positions, at most MAX_POINTS
    painted: int         # labelled pixels
    highest: int         # largest painted label, -1 when none


def read_pair(index: int, image, labels, ignore_index: int | None, seed: int) -> PaintedImage:
    """Check and wrap image ``index``: channels-last as napari holds RGB, labels integer and of the same Y, X."""
    mask = np.asarray(labels)
    if mask.ndim != 2:
        raise TrainingError(f"labels {index}: a 2D (Y, X) label image is needed, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise TrainingError(f"labels {index}: integer class labels are needed, got {mask.dtype}")
    ndim = len(getattr(image, "shape", ()))
    if ndim not in (2, 3):
        raise TrainingError(f"image {index}: a 2D (Y, X) or channels-last (Y, X, C) image is needed, "
                            f"got shape {tuple(getattr(image, 'shape', ()))}")
    if tuple(image.shape[:2]) != mask.shape:
        raise TrainingError(f"image {index} is {tuple(image.shape[:2])} (Y, X) but its labels are {mask.shape}")
    try:
        source = open_image(open_levels(image), channel_axis=2 if ndim == 3 else None, yx_shape=mask.shape)
    except DDUNetError as error:
        raise TrainingError(f"image {index}: {error}") from None
    kept = mask != ignore_index if ignore_index is not None else np.ones(mask.shape, bool)
    ys, xs = np.nonzero(kept)
    if ys.size and int(mask[kept].min()) < 0:
        raise TrainingError(f"labels {index} hold label {int(mask[kept].min())}; class labels are 0, 1, 2, ...")
    highest = int(mask[kept].max()) if ys.size else -1
    points = np.stack([ys, xs], axis=1)
    if len(points) > MAX_POINTS:
        points = points[np.sort(np.random.default_rng([seed, index]).choice(len(points), MAX_POINTS, False))]
    return PaintedImage(datasets._ChannelsLast(source), mask, points, int(ys.size), highest)


class PaintedCrops(datasets.CropDataset):
    """Training crops, each containing a labelled pixel: the images weighted by how much of them is painted."""

    def __init__(self, sources: list[datasets.Source], points: list[np.ndarray], crop: tuple[int, int], seed: int,
                 samples: int, augment: bool) -> None:
        super().__init__(sources, crop, True, seed, samples, augment)
        self.points = points
        counts = np.array([len(p) for p in points], float)
        self.weights = counts / counts.sum()

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        ch, cw = self.crop
        k = int(rng.choice(len(self.sources), p=self.weights))
        py, px = self.points[k][int(rng.integers(len(self.points[k])))]
        height, width = self.sources[k].shape
        y = int(rng.integers(max(0, py - ch + 1), min(height - ch, py) + 1))
        x = int(rng.integers(max(0, px - cw + 1), min(width - cw, px) + 1))
        return k, y, x


def painted_tiles(labels: np.ndarray, crop: tuple[int, int], ignore_index: int | None) -> list[tuple[int, int]]:
    """(top, left) of the crop-sized tiles covering the image (the last row and column flush with its edge)
    that hold a labelled pixel."""
    (height, width), (ch, cw) = labels.shape, crop
    rows = sorted({min(y, height - ch) for y in range(0, height, ch)})
    cols = sorted({min(x, width - cw) for x in range(0, width, cw)})
    return [(y, x) for y in rows for x in cols
            if ignore_index is None or (labels[y:y + ch, x:x + cw] != ignore_index).any()]


def arrays_task(pairs: Sequence[PaintedImage], crop: tuple[int, int], seed: int, num_classes: int,
                class_names: tuple[str, ...], class_colors, ignore_index: int | None, samples: int | None,
                augment: bool = True) -> datasets.TaskData:
    """The training task of painted images: crops around labels; validation and test on the painted tiles.

    ``samples`` crops per epoch; by default four per painted tile (at least 8), so an epoch covers the strokes.
    """
    sources = [datasets.Source(f"image {i}", p.image, p.labels) for i, p in enumerate(pairs)]
    tiles = [(k, y, x) for k, p in enumerate(pairs) for y, x in painted_tiles(p.labels, crop, ignore_index)]
    count = samples if samples is not None else max(8, 4 * len(tiles))
    train = PaintedCrops(sources, [p.points for p in pairs], crop, seed, count, augment)
    evaluation = datasets.CropDataset(sources, crop, False, seed)
    evaluation.tiles = tiles
    mean, std, stats = datasets._statistics(sources)
    return datasets.TaskData(train, evaluation, evaluation, int(pairs[0].image.shape[2]), num_classes, class_names,
                             class_colors, mean, std, crop, "global", stats)
