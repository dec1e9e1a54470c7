"""The Blue Marble lakes protocol (issue 13): lake vs ocean, which only context tells apart.

``python -m training.lakes CKPT [CKPT ...] [--split test] [--plot recall.png] [--json out.json]``

Held-out boxes (``core/data/bluemarble.LAKES_TEST_BOX`` and ``LAKES_VAL_BOX``) each hold several
large lakes and open ocean; training crops come from everywhere else, never within
``LAKES_MARGIN`` px of a box, and a share of them (``--lake-share``) is drawn to contain a lake
pixel at a uniformly random place in the crop (not always its centre, so position says nothing).
Evaluation cuts a box into 384 px tiles seen as 8 x 8 subdomains of 48 px (the U-Net, F=0: each
tile whole), sums the confusion counts over the box before the ratios, and measures lake recall
as a function of each lake pixel's distance to the shore (how much context it needs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ddunet.core.checkpoints.format import load_checkpoint
from napari_ddunet.core.data import bluemarble
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.io import normalization as value_ranges
from training import datasets
from training.metrics import ConfusionMatrix

LAKE = bluemarble.CLASS_NAMES.index("lake")
#: Distance-to-shore bins in pixels: [1, 2), [2, 3), [3, 5), ... (a lake pixel is at least 1 px from land).
PX_EDGES = (1, 2, 3, 5, 9, 17, 33)
#: The same curve in kilometres (along the metric distance to the nearest shore pixel).
KM_EDGES = (0.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TILE = (384, 384)
GRID = (8, 8)


class LakesError(DDUNetError):
    """Options that cannot run the lakes protocol (one line for the user)."""


class LakeCrops(datasets.CropDataset):
    """Training crops of the whole globe that never come within the margin of a held-out box;
    a ``lake_share`` of them holds a training lake pixel at a random place in the crop."""

    def __init__(self, source: datasets.Source, crop: tuple[int, int], seed: int, samples: int,
                 augment: bool, lake_share: float, margin: int = bluemarble.LAKES_MARGIN) -> None:
        super().__init__([source], crop, True, seed, samples, augment)
        self.lake_share = lake_share
        self.forbidden = [(t - margin, b + margin, left - margin, r + margin)
                          for t, b, left, r in bluemarble.lakes_boxes(source.shape).values()]
        mask = np.asarray(source.mask)
        self.lake_pixels = np.argwhere((mask == LAKE) & bluemarble.lakes_train_area(mask.shape, margin))

    def allowed(self, y: int, x: int) -> bool:
        """Whether the crop with top-left (y, x) stays clear of every grown box."""
        ch, cw = self.crop
        return not any(y < b and y + ch > t and x < r and x + cw > left for t, b, left, r in self.forbidden)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        ch, cw = self.crop
        height, width = self.sources[0].shape
        lake = self.lake_share > 0 and rng.random() < self.lake_share
        for _ in range(10_000):
            if lake:
                py, px = self.lake_pixels[int(rng.integers(len(self.lake_pixels)))]
                y = int(np.clip(py - rng.integers(ch), 0, height - ch))
                x = int(np.clip(px - rng.integers(cw), 0, width - cw))
            else:
                y, x = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
            if self.allowed(y, x):
                return 0, y, x
        raise LakesError("no training crop of this size fits outside the held-out boxes")


def lakes_task(crop: tuple[int, int], seed: int, augment: bool = True, samples: int | None = None,
               mode: str = "global", lake_share: float = 0.0) -> datasets.TaskData:
    """The lakes protocol as a training task: the globe minus the boxes trains, the boxes validate and test."""
    if not 0.0 <= lake_share <= 1.0:
        raise LakesError(f"--lake-share must lie in [0, 1], got {lake_share}")
    try:
        image, mask = bluemarble.load_task()
    except bluemarble.BlueMarbleError as error:
        raise datasets.DatasetError(str(error)) from None
    globe = datasets.Source("bluemarble-lakes train", image, mask).with_prescale(mode)
    boxes = bluemarble.lakes_boxes(mask.shape)
    held_out = {
        split: datasets.CropDataset([dataclasses.replace(globe, name=f"bluemarble-lakes {split}", rows=(t, b),
                                                         columns=(left, r))], crop, False, seed)
        for split, (t, b, left, r) in boxes.items()}
    area = bluemarble.lakes_train_area(mask.shape)
    stride = 4
    pixels = globe.scaled(image[::stride, ::stride])[area[::stride, ::stride]]
    stats = value_ranges.pooled_statistics([np.asarray(pixels, np.float64).T], image.dtype)
    std = tuple(s if s > 0 else 1.0 for s in stats.std)
    train = LakeCrops(globe, crop, seed, samples or 256, augment, lake_share)
    return datasets.TaskData(train, held_out["val"], held_out["test"], 3, 3, bluemarble.CLASS_NAMES,
                             bluemarble.CLASS_COLORS, stats.mean, std, crop, mode, stats)


def shore_distance(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(px, km) of every lake pixel to the nearest non-lake pixel (0 elsewhere), on the global grid.

    The km value is that of the same nearest pixel pair, east-west steps shrunk by the cosine of the
    mean latitude (plate carree)."""
    from scipy.ndimage import distance_transform_edt

    lake = mask == LAKE
    px, (iy, ix) = distance_transform_edt(lake, return_indices=True)
    rows = np.arange(mask.shape[0])[:, None]
    latitude = np.deg2rad(90.0 - (rows + iy + 1.0) / 2.0 * 180.0 / mask.shape[0])
    dy = (iy - rows).astype(np.float64)
    dx = (ix - np.arange(mask.shape[1])[None, :]).astype(np.float64) * np.cos(latitude)
    km = np.hypot(dy, dx) * bluemarble.KM_PER_PIXEL * 2700 / mask.shape[0]
    return px, np.where(lake, km, 0.0)


def _bins(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    return np.digitize(values, edges[1:])


@torch.no_grad()
def evaluate_lakes(model, dataset: datasets.CropDataset, grid: tuple[int, int],
                   distance: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Confusion counts summed over every tile of ``dataset`` and lake recall per distance-to-shore bin."""
    from training.evaluate import normalizer

    mean, std = normalizer(model)
    confusion = ConfusionMatrix(model.info.config.num_classes)
    hits = {"px": np.zeros(len(PX_EDGES), np.int64), "km": np.zeros(len(KM_EDGES), np.int64)}
    totals = {key: np.zeros_like(value) for key, value in hits.items()}
    ch, cw = dataset.crop
    for index in range(len(dataset)):
        image, mask = dataset[index]
        prediction = model((image[None].to(torch.float32) - mean) / std, grid).argmax(1)[0].numpy()
        confusion.update(prediction, mask)
        _, y, x = dataset.tiles[index]
        lake = mask.numpy() == LAKE
        found = prediction[lake] == LAKE
        for (key, edges), field in zip((("px", PX_EDGES), ("km", KM_EDGES)), distance, strict=True):
            bins = _bins(field[y:y + ch, x:x + cw][lake], edges)
            totals[key] += np.bincount(bins, minlength=len(edges))
            hits[key] += np.bincount(bins[found], minlength=len(edges))
    result = confusion.compute(bluemarble.CLASS_NAMES)
    result["pixels_per_class"] = confusion.matrix.sum(axis=1).tolist()
    result["confusion"] = confusion.matrix.tolist()
    result["tiles"] = len(dataset)
    for key, edges in (("px", PX_EDGES), ("km", KM_EDGES)):
        result[f"shore_{key}"] = {"edges": list(edges), "lake_pixels": totals[key].tolist(),
                                  "recalled": hits[key].tolist()}
    return result


def protocol_runs(path: Path) -> list[tuple[str, Any, tuple[int, int]]]:
    """(label, model, grid) of one checkpoint: a DDU-Net as 8 x 8 (and, with exchange, once more without it),
    the U-Net (F=0) as each tile whole."""
    from training.evaluate import without_communication

    model = load_checkpoint(path)
    config = model.config
    name = path.parent.name if path.stem in ("best", "last") else path.stem  # a training run's folder names it
    if not config.comm_features:
        return [(f"{name} (1x1)", model, (1, 1))]
    runs = [(f"{name} (8x8{'' if config.communicate else ', C=N'})", model, GRID)]
    if config.communicate:
        runs.append((f"{name} (8x8, exchange off)", without_communication(model), GRID))
    return runs


def evaluate_checkpoints(paths: list[Path], split: str = "test") -> dict[str, dict[str, Any]]:
    """Every protocol run of every checkpoint on one held-out box, keyed by a label such as 'x (8x8)'."""
    runs = [run for path in paths for run in protocol_runs(path)]
    modes = {(m.info.normalization.mode or "global") if m.info.normalization else "global" for _, m, _ in runs}
    if len(modes) != 1:
        raise LakesError(f"the checkpoints were trained with different normalisations {sorted(modes)}")
    task = lakes_task(TILE, seed=0, augment=False, mode=modes.pop())
    dataset = {"val": task.val, "test": task.test}[split]
    distance = shore_distance(np.asarray(dataset.sources[0].mask))
    return {label: evaluate_lakes(model, dataset, grid, distance) for label, model, grid in runs}


def plot_recall(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Lake recall against distance to the shore (px and km panels), one line per evaluated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, unit in ((axes[0], "shore_px", "px"), (axes[1], "shore_km", "km")):
        for label, result in results.items():
            curve = result[key]
            totals = np.asarray(curve["lake_pixels"], float)
            recall = np.divide(curve["recalled"], totals, out=np.full(totals.shape, np.nan), where=totals > 0)
            ax.plot(range(len(recall)), recall, "o-", label=label)
        edges = results[next(iter(results))][key]["edges"]
        ax.set_xticks(range(len(edges)), [f">={e:g}" for e in edges])
        ax.set_xlabel(f"distance to the shore ({unit})")
        ax.set_ylabel("lake recall")
        ax.set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.lakes", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--plot", type=Path, help="write the lake recall vs distance-to-shore curves here (PNG)")
    p.add_argument("--json", type=Path, help="write every result (confusion counts, curves) here")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for path in args.checkpoints:
            if not path.is_file():
                raise LakesError(f"{path}: no such checkpoint")
        for out in (args.plot, args.json):
            if out is not None and out.exists():
                raise LakesError(f"{out} exists; name a new file")
        if args.threads:
            torch.set_num_threads(args.threads)
        results = evaluate_checkpoints(args.checkpoints, args.split)
    except DDUNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot_recall(results, args.plot)
    return 0


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per evaluated model: mIoU and IoU / precision / recall of every class."""
    names = bluemarble.CLASS_NAMES
    head = "| model | mIoU | " + " | ".join(f"{n} IoU | {n} P | {n} R" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(names))]
    for label, r in results.items():
        cells = [f"{r[f'{m}/{n}']:.4f}" for n in names for m in ("iou", "precision", "recall")]
        lines.append(f"| {label} | {r['miou']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
