"""Train from in-memory arrays without Qt: the napari training panel's entry point, and a notebook's.

``train_iter(request)`` is a generator over :class:`TrainingEvent` s that runs the same epoch loop as
``python -m training.train`` (:func:`training.train.train_iter`) and returns a :class:`TrainingResult`;
closing it (napari's ``worker.quit()``) stops between two batches and leaves best.pt of the last improved
epoch loadable. ``train_arrays(request, on_event)`` runs it to the end. Label values keep their meaning:
class v is label v, and with ``ignore_index=0`` (napari's unlabelled) the model has a class 0 that is never
trained, so its output matches the painted layer's values and colours.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from napari_ddunet.core.checkpoints.format import (
    CheckpointInfo,
    _class_colors,
    read_checkpoint_info,
    read_training_checkpoint,
)
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.progress import drive
from napari_ddunet.core.network.config import ModelConfig
from training import arrays, train
from training.train import TrainingError, TrainingEvent, TrainingPhase

__all__ = ["TrainingError", "TrainingEvent", "TrainingPhase", "TrainingRequest", "TrainingResult", "check_request",
           "train_arrays", "train_iter"]


@dataclass(frozen=True)
class TrainingRequest:
    """What to train on and how; defaults are paper 001's, with a network sized for a CPU."""

    images: tuple          # each 2D (Y, X) or channels-last (Y, X, C): numpy, dask, zarr (napari layer .data)
    labels: tuple          # one integer (Y, X) array per image, same Y, X; may be sparse
    output: Path           # folder for best.pt, last.pt, metrics.csv, curves.png, summary.json
    ignore_index: int | None = 0        # napari's unlabelled: in no loss and no metric
    class_names: tuple[str, ...] = ()   # one per class value 0..K-1
    class_colors: tuple[tuple[float, float, float, float], ...] | None = None   # RGBA 0..1 per class value
    num_classes: int | None = None      # default: largest painted label + 1
    grid: tuple[int, int] = (2, 2)      # subdomains per training crop
    subdomain_size: tuple[int, int] = (64, 64)
    depth: int = 3
    base_channels: int = 16
    comm_features: int = 32             # F
    communication: bool = True          # False: the C=N network
    fine_tune: Path | None = None       # a checkpoint whose config and weights start the run
    epochs: int = 40
    learning_rate: float = 0.008
    batch_size: int = 8
    samples_per_epoch: int | None = None
    devices: str = "cpu"
    seed: int = 0
    threads: int | None = None          # torch CPU threads (process-wide; default: torch's choice)
    resume: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class TrainingResult:
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict
    epochs_run: int


@dataclass(frozen=True)
class _Plan:
    """A checked request: the trainer's options, the wrapped images and what the model will be."""

    args: argparse.Namespace
    pairs: tuple[arrays.PaintedImage, ...]
    config: ModelConfig
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[float, float, float, float], ...] | None
    fine_tune: CheckpointInfo | None


def _default_names(num_classes: int, ignore_index: int | None) -> tuple[str, ...]:
    return tuple("unlabelled" if v == ignore_index else f"class {v}" for v in range(num_classes))


def _options(request: TrainingRequest, fine_tune: CheckpointInfo | None) -> argparse.Namespace:
    """The CLI's options for this request (its parser's defaults for everything the request does not set)."""
    config = fine_tune.config if fine_tune is not None else None
    argv = ["--output", str(request.output), "--grid", *map(str, request.grid),
            "--subdomain-size", *map(str, request.subdomain_size),
            "--depth", str(config.depth if config else request.depth),
            "--base-channels", str(config.base_channels if config else request.base_channels),
            "--comm-features", str(config.comm_features if config else request.comm_features),
            "--epochs", str(request.epochs), "--lr", str(request.learning_rate),
            "--batch-size", str(request.batch_size), "--devices", request.devices, "--seed", str(request.seed),
            "--quiet"]
    if not (config.communicate if config else request.communication):
        argv.append("--no-communication")
    if request.ignore_index is not None:
        argv += ["--ignore-index", str(request.ignore_index)]
    if request.threads is not None:
        argv += ["--threads", str(request.threads)]
    if request.samples_per_epoch is not None:
        argv += ["--samples-per-epoch", str(request.samples_per_epoch)]
    argv += ["--resume"] if request.resume else []
    argv += ["--overwrite"] if request.overwrite else []
    try:
        args = train.build_parser().parse_args(argv)
    except SystemExit:
        raise TrainingError(f"training options not understood: {' '.join(argv)}") from None
    args.dataset = "arrays"
    args.augment = True   # what arrays.arrays_task does
    args.validation = arrays.VALIDATION
    args.fine_tune = None if request.fine_tune is None else str(request.fine_tune)
    args.images = [list(getattr(image, "shape", ())) for image in request.images]
    return args


def _plan(request: TrainingRequest) -> _Plan:
    """Every check of a request, reading the labels once; nothing is written."""
    if len(request.images) == 0:
        raise TrainingError("no image to train on")
    if len(request.images) != len(request.labels):
        raise TrainingError(f"{len(request.images)} images but {len(request.labels)} label images: give one each")
    if len(request.grid) != 2 or len(request.subdomain_size) != 2:
        raise TrainingError("grid and subdomain size take two numbers each: (rows, columns), (height, width)")
    fine_tune = None
    if request.fine_tune is not None:
        fine_tune, _ = read_checkpoint_info(request.fine_tune)
    args = _options(request, fine_tune)
    train.check_args(args)
    grid, size = train.resolve_geometry(args)
    train.parse_devices(args.devices)
    crop = (grid[0] * size[0], grid[1] * size[1])
    pairs = tuple(arrays.read_pair(i, image, labels, request.ignore_index, request.seed)
                  for i, (image, labels) in enumerate(zip(request.images, request.labels, strict=True)))
    for i, pair in enumerate(pairs):
        if pair.labels.shape[0] < crop[0] or pair.labels.shape[1] < crop[1]:
            raise TrainingError(f"image {i} is {pair.labels.shape[0]}x{pair.labels.shape[1]} px, smaller than a "
                                f"{crop[0]}x{crop[1]} training crop (grid x subdomain size); use a smaller grid or "
                                "subdomain size")
    bands = {int(p.image.shape[2]) for p in pairs}
    if len(bands) != 1:
        raise TrainingError(f"the images have different band counts {sorted(bands)}; train on images of one kind")
    if sum(p.painted for p in pairs) == 0:
        what = "no pixel is labelled" if request.ignore_index is None else \
            f"no pixel is painted (every label is the ignored {request.ignore_index})"
        raise TrainingError(f"{what}: paint a few strokes of each class first")
    found = max(max(p.highest for p in pairs) + 1, 2)
    default = fine_tune.config.num_classes if fine_tune is not None else found
    num_classes = request.num_classes if request.num_classes is not None else default
    if num_classes < found:
        raise TrainingError(f"label {found - 1} is painted but there are {num_classes} classes")
    channels = bands.pop()
    if fine_tune is not None and (fine_tune.config.in_channels, fine_tune.config.num_classes) != (channels,
                                                                                                   num_classes):
        raise TrainingError(f"fine-tune: {request.fine_tune} takes {fine_tune.config.in_channels} band(s) and "
                            f"{fine_tune.config.num_classes} classes; the images have {channels} band(s) and "
                            f"{num_classes} classes")
    names = tuple(request.class_names)
    if not names:
        names = tuple(fine_tune.class_names) if fine_tune is not None else \
            _default_names(num_classes, request.ignore_index)
    if len(names) != num_classes:
        raise TrainingError(f"{len(names)} class names for {num_classes} classes (one per label value 0..."
                            f"{num_classes - 1})")
    colors = None
    if request.class_colors is not None:   # napari hands numpy rows: the checkpoint's rule on plain tuples
        colors = _class_colors(tuple(tuple(float(v) for v in c) for c in request.class_colors), num_classes)
    names = tuple(str(n) for n in names)
    args.num_classes, args.class_names = num_classes, list(names)   # the checkpoint's record of this run
    if fine_tune is not None:
        config = replace(fine_tune.config, class_names=names)
    else:
        config = train.build_config(args, SimpleNamespace(in_channels=channels, num_classes=num_classes,
                                                          class_names=names))
    if request.resume:   # another network than last.pt's is one line now, not after the statistics pass
        last = args.output / "last.pt"
        train.check_same_model(last, read_training_checkpoint(last)[0], config)
    return _Plan(args, pairs, config, names, colors, fine_tune)


def _checked(request: TrainingRequest) -> _Plan:
    """:func:`_plan`, every user mistake (a damaged checkpoint, an unknown device...) as a TrainingError."""
    try:
        return _plan(request)
    except TrainingError:
        raise
    except DDUNetError as error:
        raise TrainingError(str(error)) from None


def check_request(request: TrainingRequest) -> None:
    """Raise the one-line :class:`TrainingError` a request deserves, before any work or file."""
    _checked(request)


def train_iter(request: TrainingRequest) -> Generator[TrainingEvent, None, TrainingResult]:
    """Check the request, then yield the run's events; returns where best.pt and last.pt are."""
    plan = _checked(request)
    args = plan.args
    yield TrainingEvent(TrainingPhase.PREPARING, 0, args.epochs, 0, 0)
    grid, size = train.resolve_geometry(args)
    crop = (grid[0] * size[0], grid[1] * size[1])
    task = arrays.arrays_task(plan.pairs, crop, args.seed, plan.config.num_classes, plan.class_names,
                              plan.class_colors, request.ignore_index, args.samples_per_epoch)
    weights = None if plan.fine_tune is None else read_checkpoint_info(request.fine_tune)[1]
    run = train.train_iter(args, task, plan.config, weights)
    epochs_run = 0
    try:
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                metrics: dict[str, Any] = stop.value
                break
            epochs_run = len(event.history)
            yield event
    finally:
        run.close()
    return TrainingResult(args.output / "best.pt", args.output / "last.pt", metrics, epochs_run)


def train_arrays(request: TrainingRequest, on_event: Callable[[TrainingEvent], None] | None = None
                 ) -> TrainingResult:
    """Train to the end (a notebook's call); ``on_event`` sees every event."""
    return drive(train_iter(request), on_event)
