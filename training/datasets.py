"""Datasets for ``python -m training.train``: synthetic, image/mask folders, zarr pairs, Blue Marble.

Every dataset yields ``(image, mask)``: image a float32 (C, H, W) tensor of raw values (the
global normalisation is applied by the trainer, with statistics computed once from the
training split and stored in the checkpoint), mask an int64 (H, W) tensor of class labels.
A sample always covers a whole grid of subdomains: ``crop = (rows * h, cols * w)``.

Randomness (crop positions, flips, rot90, synthetic images) comes from numpy generators
seeded by (seed, epoch, index), never from global state, so a run is reproducible and a
resumed run sees exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_ddunet.core.checkpoints.format import default_class_names
from napari_ddunet.core.data import synthetic
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.io import normalization as value_ranges
from napari_ddunet.core.io.images import ChannelAxisError, ImageSource, OpenedImage, open_image, open_levels
from napari_ddunet.core.io.normalization import BandStats

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


class DatasetError(DDUNetError):
    """A dataset that cannot be used for training; the message says what is wrong."""


@dataclass
class TaskData:
    """The three splits plus what the checkpoint must record about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[float, float, float, float], ...] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: tuple[int, int]
    mode: str = "global"                  # how each image was prescaled before mean/std (core/io/normalization)
    value_range: BandStats | None = None  # the training split's statistics after the prescale

    def normalization(self) -> dict[str, object]:
        """The checkpoint's normalisation record: mode, mean/std and the value range the model was trained on."""
        record: dict[str, object] = {"mean": self.mean, "std": self.std, "mode": self.mode}
        if self.value_range is not None:
            r = self.value_range
            record.update(dtype=r.dtype, p1=r.p1, p99=r.p99, min=r.minimum, max=r.maximum)
        return record


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell a dataset which epoch it serves (changes random crops and flips, nothing else)."""
    if hasattr(dataset, "epoch"):
        dataset.epoch = epoch


def evenly_spaced(dataset: Dataset, count: int) -> Dataset:
    """At most ``count`` items of ``dataset``, spread evenly over it (quick evaluations)."""
    if count >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist())


# -- synthetic -------------------------------------------------------------------------------


class SyntheticDataset(Dataset):
    """``length`` images of the two-circles task, item i drawn from the seed (seed, split, i)."""

    def __init__(self, length: int, grid: tuple[int, int], subdomain: tuple[int, int], seed: int, split: str,
                 mode: str = "global") -> None:
        self.mode = mode
        self.length = length
        self.grid = grid
        self.subdomain = subdomain
        self.seed = seed
        self.code = _SPLIT_CODE[split]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        image, mask = synthetic.synthetic_grid(
            self.grid[0], self.grid[1], self.subdomain, seed=[self.seed, self.code, index]
        )
        if self.mode != "global":   # each image its own prescale, as inference applies it to one image
            a, b = value_ranges.image_prescale(self.mode, lambda y0, y1, x0, x1: image[None, y0:y1, x0:x1],
                                               image.shape, image.dtype)
            image = ((image - a[0]) / b[0]).astype(np.float32)
        return torch.from_numpy(image)[None], torch.from_numpy(mask.astype(np.int64))


def synthetic_task(
    grid: tuple[int, int], subdomain: tuple[int, int], seed: int, sizes: Sequence[int] = (4000, 1000, 1000),
    mode: str = "global",
) -> TaskData:
    """The paper's task; normalisation statistics from the first (up to) 512 training images."""
    try:
        synthetic.synthetic_grid(grid[0], grid[1], subdomain, seed=0)
    except synthetic.SyntheticError as error:
        raise DatasetError(f"synthetic task: {error}") from None
    train, val, test = (SyntheticDataset(n, grid, subdomain, seed, s, mode) for n, s in zip(sizes, SPLITS, strict=True))
    sample = np.stack([train[i][0].numpy() for i in range(min(len(train), 512))])
    stats = value_ranges.pooled_statistics([sample.reshape(1, -1)], sample.dtype)
    return TaskData(
        train, val, test, 1, 3, synthetic.CLASS_NAMES, synthetic.CLASS_COLORS,
        (float(sample.mean()),), (float(sample.std()),),
        (grid[0] * subdomain[0], grid[1] * subdomain[1]), mode, stats,
    )


# -- crops of large images -------------------------------------------------------------------


@dataclass
class Source:
    """One image/mask pair; ``image`` is (H, W, C), both sliceable lazily (numpy or zarr)."""

    name: str
    image: object
    mask: object
    columns: tuple[int, int] | None = None  # restrict crops to these columns (Blue Marble regions)
    rows: tuple[int, int] | None = None  # and to these rows (the Blue Marble lakes boxes)
    prescale: tuple[np.ndarray, np.ndarray] | None = None  # (a, b): the image is read as (x - a) / b per band

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Raw pixels of a rectangle as float64 (C, h, w) (the lattice sample of its prescale)."""
        return np.moveaxis(np.asarray(self.image[y0:y1, x0:x1], dtype=np.float64), -1, 0)

    def scaled(self, block: np.ndarray) -> np.ndarray:
        """(H, W, C) pixels of this image after its prescale."""
        if self.prescale is None:
            return block
        a, b = self.prescale
        return (np.asarray(block, dtype=np.float64) - a) / b

    def with_prescale(self, mode: str) -> Source:
        """This image prescaled by ``mode`` (its own percentiles, or its dtype's range)."""
        if mode == "global":
            return self
        dtype = getattr(self.image, "dtype", np.float64)
        return replace(self, prescale=value_ranges.image_prescale(mode, self.read, self.shape, dtype))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape[:2])

    @property
    def extent(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the region crops may come from."""
        height, width = self.shape
        left, right = self.columns or (0, width)
        top, bottom = self.rows or (0, height)
        return top, bottom, left, right


class CropDataset(Dataset):
    """Whole-grid crops of large images.

    Training: ``samples`` random crops per epoch with optional flips and rot90 (rot90 only
    for square crops, so the subdomain grid keeps its shape). Evaluation: the non-overlapping
    crops tiling every source region, fixed.
    """

    def __init__(
        self,
        sources: list[Source],
        crop: tuple[int, int],
        train: bool,
        seed: int,
        samples: int | None = None,
        augment: bool = True,
    ) -> None:
        self.sources = sources
        self.crop = crop
        self.train = train
        self.seed = seed
        self.augment = augment and train
        self.epoch = 0
        ch, cw = crop
        self.tiles: list[tuple[int, int, int]] = []
        for k, source in enumerate(sources):
            top, bottom, left, right = source.extent
            if bottom - top < ch or right - left < cw:
                raise DatasetError(
                    f"{source.name}: region of {bottom - top}x{right - left} px is smaller than the "
                    f"{ch}x{cw} crop (grid x subdomain size); use a smaller --grid or --subdomain-size"
                )
            for y in range(top, bottom - ch + 1, ch):
                for x in range(left, right - cw + 1, cw):
                    self.tiles.append((k, y, x))
        areas = np.array([(s.extent[1] - s.extent[0]) * (s.extent[3] - s.extent[2]) for s in sources], float)
        self.weights = areas / areas.sum()
        self.samples = samples if samples is not None else len(self.tiles)

    def __len__(self) -> int:
        return self.samples if self.train else len(self.tiles)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A random training crop: (source index, top, left); subclasses may restrict or bias it."""
        ch, cw = self.crop
        k = int(rng.choice(len(self.sources), p=self.weights))
        top, bottom, left, right = self.sources[k].extent
        return k, int(rng.integers(top, bottom - ch + 1)), int(rng.integers(left, right - cw + 1))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        ch, cw = self.crop
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            k, y, x = self.draw(rng)
        else:
            k, y, x = self.tiles[index]
        source = self.sources[k]
        image = np.asarray(source.scaled(source.image[y:y + ch, x:x + cw]), dtype=np.float32)
        mask = np.asarray(source.mask[y:y + ch, x:x + cw]).astype(np.int64)
        if self.augment:
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if rng.random() < 0.5:
                image, mask = image[::-1], mask[::-1]
            if ch == cw:
                turns = int(rng.integers(4))
                image, mask = np.rot90(image, turns), np.rot90(mask, turns)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return image, torch.from_numpy(np.ascontiguousarray(mask))


class _ChannelsLast:
    """An image of any layout and band count viewed as (H, W, C) float64 of its chosen bands, read
    only where sliced (and only those bands)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self.shape = (*source.shape, source.channels)
        self.dtype = source.dtype   # the stored pixel type (what the checkpoint records); reads are float64

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key
        return np.moveaxis(self.source.window(rows, cols), 0, -1)


def _open(path: Path) -> OpenedImage:
    """PNG through Pillow (read whole: PNG has no tiles), everything else through the package's opener."""
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return open_levels(np.asarray(image))
        return open_levels(path)
    except DDUNetError as error:
        raise DatasetError(str(error)) from None
    except Exception as error:
        raise DatasetError(f"cannot read {path}: {str(error).splitlines()[0]}") from None


def _open_image(path: Path, yx_shape: tuple[int, ...], channels: Sequence[int] | None) -> _ChannelsLast:
    """An image as (H, W, C) of its ``channels`` (all bands when None), its channel axis told by the one
    layout rule of :mod:`napari_ddunet.core.io`, which the mask's shape settles for any number of bands."""
    try:
        return _ChannelsLast(open_image(_open(path), channels=channels, yx_shape=yx_shape))
    except ChannelAxisError as error:
        raise DatasetError(f"{path}: no axis of the {error.shape} image holds bands around its mask's "
                           f"{tuple(yx_shape)} (image and mask must have the same height and width)") from None
    except DDUNetError as error:
        raise DatasetError(f"{path}: {error}") from None


def _open_mask(path: Path):
    mask = _open(path).array
    if mask.ndim != 2:
        raise DatasetError(f"{path}: masks must be 2-D label images, got shape {tuple(mask.shape)}")
    return mask


def _pairs(directory: Path, kind: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by file stem in ``directory/images`` and ``directory/masks``."""
    images_dir, masks_dir = directory / "images", directory / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DatasetError(f"{directory} needs 'images' and 'masks' subfolders")
    if kind == "zarr":
        def pick(d: Path) -> dict[str, Path]:
            return {p.stem: p for p in sorted(d.iterdir()) if p.suffix == ".zarr"}
    else:
        def pick(d: Path) -> dict[str, Path]:
            return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    images, masks = pick(images_dir), pick(masks_dir)
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DatasetError(f"{directory}: image {missing[0]!r} has no mask of the same name in masks/")
    if not images:
        suffixes = ".zarr" if kind == "zarr" else "/".join(IMAGE_SUFFIXES)
        raise DatasetError(f"{images_dir} holds no {suffixes} images")
    return [(images[k], masks[k]) for k in sorted(images)]


def _load_sources(pairs: list[tuple[Path, Path]], channels: Sequence[int] | None) -> list[Source]:
    sources = []
    for image_path, mask_path in pairs:
        mask = _open_mask(mask_path)
        image = _open_image(image_path, tuple(mask.shape), channels)
        if tuple(image.shape[:2]) != tuple(mask.shape):
            raise DatasetError(
                f"{image_path.name}: image is {tuple(image.shape[:2])} but its mask is {tuple(mask.shape)}"
            )
        if not np.issubdtype(np.dtype(mask.dtype), np.integer):
            raise DatasetError(f"{mask_path}: masks must hold integer class labels, got {mask.dtype}")
        sources.append(Source(image_path.stem, image, mask))
    return sources


def _mask_range(mask, ignore_index: int | None = None) -> tuple[int, int]:
    """Smallest and largest label of a mask (one pass over a zarr mask), leaving out ``ignore_index``;
    (0, -1) when every pixel is ignored."""
    if isinstance(mask, np.ndarray):
        if ignore_index is None:
            return int(mask.min()), int(mask.max())
        labels = mask[mask != ignore_index]
        return (int(labels.min()), int(labels.max())) if labels.size else (0, -1)
    import dask.array as da

    array = da.from_zarr(mask)
    if ignore_index is None:
        low, high = da.compute(array.min(), array.max())
        return int(low), int(high)
    array = array.astype(np.int64)
    kept = array != ignore_index
    low, high = da.compute(da.where(kept, array, np.iinfo(np.int64).max).min(), da.where(kept, array, -1).max())
    return (0, -1) if low == np.iinfo(np.int64).max else (int(low), int(high))


def _statistics(sources: list[Source], max_pixels: int = 4_000_000
                ) -> tuple[tuple[float, ...], tuple[float, ...], BandStats]:
    """Per-channel mean and std over the training regions (strided when they are large), after each image's
    prescale, and the value range the checkpoint records (dtype, p1, p99, min, max in the same space)."""
    total = sum((s.extent[1] - s.extent[0]) * (s.extent[3] - s.extent[2]) for s in sources)
    stride = max(1, int(np.ceil(np.sqrt(total / max_pixels))))

    def blocks():
        for source in sources:
            top, bottom, left, right = source.extent
            block = np.asarray(source.scaled(source.image[top:bottom:stride, left:right:stride]), dtype=np.float64)
            yield block.reshape(-1, block.shape[-1]).T

    stats = value_ranges.pooled_statistics(blocks(), getattr(sources[0].image, "dtype", np.float64))
    std = tuple(s if s > 0 else 1.0 for s in stats.std)
    return stats.mean, std, stats


def _split_pairs(pairs: list, seed: int) -> dict[str, list]:
    """80/10/10 split by a seeded permutation; fewer than 3 pairs are reused for val and test."""
    if len(pairs) < 3:
        return {"train": pairs, "val": pairs, "test": pairs}
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(0.1 * len(pairs)))
    n_test = max(1, round(0.1 * len(pairs)))
    val = [pairs[i] for i in order[:n_val]]
    test = [pairs[i] for i in order[n_val:n_val + n_test]]
    train = [pairs[i] for i in order[n_val + n_test:]]
    return {"train": train, "val": val, "test": test}


def pairs_task(
    root: str | Path,
    kind: str,
    crop: tuple[int, int],
    seed: int,
    augment: bool = True,
    samples: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    channels: Sequence[int] | None = None,
    mode: str = "global",
    ignore_index: int | None = None,
) -> TaskData:
    """Image/mask pairs (``kind`` 'folder' for PNG/TIFF, 'zarr' for zarr stores).

    ``root`` holds ``images/`` and ``masks/`` (split 80/10/10 by the seed) or ``train/``,
    ``val/`` and ``test/`` folders that each hold them. ``channels`` picks bands by index, in that
    order (``--channels``); by default every band of every image, any number of them. ``mode`` prescales
    each image before the statistics (``--normalization``, :mod:`napari_ddunet.core.io.normalization`).
    Mask pixels equal to ``ignore_index`` (``--ignore-index``) are not labels: the range check skips them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root}: not a directory")
    if all((root / s).is_dir() for s in SPLITS):
        split = {s: _pairs(root / s, kind) for s in SPLITS}
    else:
        split = _split_pairs(_pairs(root, kind), seed)
    sources = {s: _load_sources(p, channels) for s, p in split.items()}
    counts = {int(src.image.shape[2]) for group in sources.values() for src in group}
    if len(counts) != 1:
        raise DatasetError(f"{root}: images have different band counts {sorted(counts)}; choose the same bands "
                           "of each with --channels")
    ranges = {path: _mask_range(src.mask, ignore_index)
              for s in split for (_, path), src in zip(split[s], sources[s], strict=True)}
    lowest = min(ranges, key=lambda path: ranges[path][0])
    if ranges[lowest][0] < 0:
        raise DatasetError(f"{lowest}: mask holds label {ranges[lowest][0]}; class labels are 0, 1, 2, ...")
    highest = max(ranges, key=lambda path: ranges[path][1])
    found = ranges[highest][1] + 1
    if num_classes is None:
        num_classes = max(found, 2)
    elif found > num_classes:
        raise DatasetError(f"{highest}: mask holds label {found - 1} but --num-classes is {num_classes}")
    names = tuple(class_names) if class_names else default_class_names(num_classes)
    if len(names) != num_classes:
        raise DatasetError(f"{len(names)} class names for {num_classes} classes")
    sources = {s: [src.with_prescale(mode) for src in group] for s, group in sources.items()}
    mean, std, stats = _statistics(sources["train"])
    return TaskData(
        CropDataset(sources["train"], crop, True, seed, samples, augment),
        CropDataset(sources["val"], crop, False, seed),
        CropDataset(sources["test"], crop, False, seed),
        counts.pop(), num_classes, names, None, mean, std, crop, mode, stats,
    )


def bluemarble_task(
    crop: tuple[int, int], seed: int, augment: bool = True, samples: int | None = None, mode: str = "global"
) -> TaskData:
    """Blue Marble land/ocean/lake: two longitude bands held out for validation and test."""
    from napari_ddunet.core.data import bluemarble

    try:
        image, mask = bluemarble.load_task()
    except bluemarble.BlueMarbleError as error:
        raise DatasetError(str(error)) from None
    regions = bluemarble.split_regions(image.shape[1])
    sources = {
        split: [Source(f"bluemarble {split} {a}-{b}", image, mask, (a, b)).with_prescale(mode) for a, b in ranges]
        for split, ranges in regions.items()
    }
    mean, std, stats = _statistics(sources["train"])
    return TaskData(
        CropDataset(sources["train"], crop, True, seed, samples, augment),
        CropDataset(sources["val"], crop, False, seed),
        CropDataset(sources["test"], crop, False, seed),
        3, 3, bluemarble.CLASS_NAMES, bluemarble.CLASS_COLORS, mean, std, crop, mode, stats,
    )
