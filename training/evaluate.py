"""Evaluate a checkpoint on the held-out split with a chosen subdomain grid (paper 001, V-B protocol).

``python -m training.evaluate CKPT --dataset bluemarble --tile 384 384 --grid 8 8 [--store]``
(``--dataset bluemarble-lakes``: the held-out boxes of training/lakes.py, which also draws the
distance-to-shore curve.)

The split (test by default) is cut into non-overlapping tiles of ``--tile`` pixels; each tile
goes through the model as one image split into ``--grid`` subdomains (DDU-Net: 8 x 8 subdomains
of its trained size; U-Net baseline: the same tile as a single 1 x 1 subdomain, i.e. the full
image). IoU counts are summed over all tiles before the ratio (Eq. 2-3). ``--store`` writes the
result into the checkpoint's provenance under ``metrics["eval"]`` (a list, one entry per
protocol, with the confusion matrix of every tile), so the bundled models carry the numbers
docs/results.md quotes and a test can re-check any tile exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from napari_ddunet.core.checkpoints.format import load_checkpoint, read_checkpoint_info, replace_metrics
from napari_ddunet.core.errors import DDUNetError
from training import datasets
from training.metrics import ConfusionMatrix


class EvaluationError(DDUNetError):
    """Options that cannot evaluate this checkpoint (one line for the user)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dataset", choices=("bluemarble", "bluemarble-lakes"), default="bluemarble",
                   help="bluemarble-lakes: the held-out boxes of training/lakes.py")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"), required=True, help="tile size in pixels")
    p.add_argument("--grid", type=int, nargs=2, metavar=("R", "C"), required=True,
                   help="subdomains each tile is split into (1 1: the whole tile at once)")
    p.add_argument("--no-communication", action="store_true",
                   help="switch the exchange off at inference (same weights: each subdomain's bottleneck alone)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--store", action="store_true", help="append the result to the checkpoint's metrics['eval']")
    return p


def split_dataset(name: str, split: str, tile: tuple[int, int], mode: str = "global"):
    """The fixed non-overlapping tiles of one split, and the task (for class names)."""
    if name == "bluemarble-lakes":
        from training.lakes import lakes_task

        task = lakes_task(tile, seed=0, augment=False, mode=mode)
    elif name == "bluemarble":
        task = datasets.bluemarble_task(tile, seed=0, augment=False, mode=mode)   # each image prescaled as in training
    else:
        raise EvaluationError(f"unknown dataset {name!r}")
    return {"val": task.val, "test": task.test}[split], task


@torch.no_grad()
def evaluate(model, dataset, grid: tuple[int, int], class_names: tuple[str, ...]) -> dict[str, Any]:
    """Dataset-level metrics of ``model`` on every tile of ``dataset`` split into ``grid`` subdomains."""
    info = model.info
    mean, std = normalizer(model)
    confusion = ConfusionMatrix(info.config.num_classes)
    per_tile = []
    for index in range(len(dataset)):
        image, mask = dataset[index]
        x = (image[None].to(torch.float32) - mean) / std
        tile = ConfusionMatrix(info.config.num_classes)
        tile.update(model(x, grid).argmax(1)[0], mask)
        confusion.add(tile.matrix)
        per_tile.append(tile.matrix.tolist())
    result = confusion.compute(class_names)
    result["pixels_per_class"] = confusion.matrix.sum(axis=1).tolist()
    result["tiles"] = len(dataset)
    result["confusion_per_tile"] = per_tile
    return result


def normalizer(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the checkpoint's global normalisation, shaped (1, C, 1, 1) (identity without a record)."""
    info = model.info
    norm = info.normalization
    mean = torch.tensor(norm.mean if norm else (0.0,) * info.config.in_channels).view(1, -1, 1, 1)
    std = torch.tensor(norm.std if norm else (1.0,) * info.config.in_channels).view(1, -1, 1, 1)
    return mean, std


def run(args: argparse.Namespace) -> dict[str, Any]:
    tile, grid = tuple(args.tile), tuple(args.grid)
    if min(grid) < 1 or min(tile) < 1:
        raise EvaluationError("--tile and --grid must be positive")
    if tile[0] % grid[0] or tile[1] % grid[1]:
        raise EvaluationError(f"a {tile[0]}x{tile[1]} tile does not split into a {grid[0]}x{grid[1]} grid")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)
    if args.no_communication:
        model = without_communication(model)
    sub = (tile[0] // grid[0], tile[1] // grid[1])
    step = model.info.config.downsampling
    if sub[0] % step or sub[1] % step:
        raise EvaluationError(f"subdomains of {sub[0]}x{sub[1]} px are not multiples of the model's {step} px step")
    tic = time.perf_counter()
    norm = model.info.normalization
    dataset, task = split_dataset(args.dataset, args.split, tile, (norm.mode or "global") if norm else "global")
    result = evaluate(model, dataset, grid, task.class_names)
    exchange = bool(model.config.communicate and model.config.comm_features)
    entry = {"dataset": args.dataset, "split": args.split, "tile": list(tile), "grid": list(grid),
             "subdomain_size": list(sub), "communicate": exchange, **result,
             "seconds": round(time.perf_counter() - tic, 1)}
    if args.store:
        store(args.checkpoint, entry)
    return entry


def without_communication(model):
    """The same weights with C=N: the communication network sees each subdomain's bottleneck alone."""
    from napari_ddunet.core.network.model import DDUNet

    plain = DDUNet(model.config.replace(communicate=False))
    plain.load_state_dict(model.state_dict())
    plain.info = model.info
    return plain.eval()


def _key(entry: dict[str, Any]) -> tuple:
    return entry.get("dataset", "bluemarble"), entry["split"], entry["tile"], entry["grid"], entry.get("communicate")


def store(path: Path, entry: dict[str, Any]) -> None:
    """Rewrite the checkpoint with ``entry`` added to metrics['eval'] (weights and the rest of provenance kept)."""
    metrics = read_checkpoint_info(path)[0].metrics
    keep = [e for e in metrics.get("eval", []) if _key(e) != _key(entry)]
    replace_metrics(path, {**metrics, "eval": [*keep, entry]})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        entry = run(args)
    except DDUNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = [k[4:] for k in entry if k.startswith("iou/")]
    keys = ("split", "tile", "grid", "communicate", "miou", *(f"iou/{n}" for n in names), "pixels_per_class",
            "tiles", "seconds")
    print(json.dumps({k: entry[k] for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
