"""Train a DDU-Net: ``python -m training.train --dataset synthetic --output runs/syn``.

Defaults follow paper 001 Table X (the synthetic experiments): Adam(0.9, 0.999) at lr 0.008,
at most 40 epochs, learning rate halved after 3 epochs without a lower validation loss, early
stopping after 8 such epochs but never before epoch 20, dropout 0.1, batch size 16, dice loss.
``--output DIR`` receives best.pt (lowest validation loss), last.pt (plus optimizer, scheduler
and RNG state for ``--resume``), metrics.csv and curves.png. Under ``torchrun`` the subdomains
of every image are split across the ranks (see training/distributed.py). ``train(args)`` drains
:func:`train_iter`, the one epoch loop that the napari panel and notebooks run too (training/session.py).
"""

from __future__ import annotations

import argparse
import csv
import enum
import json
import math
import os
import sys
import time
from collections.abc import Callable, Generator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ddunet.core.checkpoints.format import (
    CheckpointInfo,
    read_checkpoint_info,
    read_training_checkpoint,
    save_checkpoint,
    save_training_state,
)
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.devices import resolve_devices
from napari_ddunet.core.inference.process_group import destroy_process_group
from napari_ddunet.core.inference.progress import drive
from napari_ddunet.core.io import normalization as value_ranges
from napari_ddunet.core.network.config import ModelConfig
from napari_ddunet.core.network.model import DDUNet
from training import datasets, distributed, losses
from training.metrics import ConfusionMatrix

DATASETS = ("synthetic", "folder", "zarr", "bluemarble", "bluemarble-lakes")
#: What a run writes into --output, and all that --overwrite may replace there.
OUTPUT_FILES = ("best.pt", "last.pt", "metrics.csv", "curves.png", "summary.json")


class TrainingError(DDUNetError):
    """Bad training options (one line for the user)."""


class TrainingPhase(enum.Enum):
    """Where a run stands; every front end (CLI, napari panel, notebook) sees the same events."""

    PREPARING = "preparing"
    BATCH = "batch"
    EPOCH = "epoch"
    FINISHED = "finished"


@dataclass(frozen=True)
class TrainingEvent:
    """One step of a run: a batch done, an epoch written (its files exist), or the run finished."""

    phase: TrainingPhase
    epoch: int            # epochs completed so far (0 while the first runs)
    epochs: int           # the run's epoch cap
    batch: int            # batches done in the current epoch
    batches: int          # batches per epoch
    train_loss: float | None = None   # the epoch's loss (EPOCH), its running mean (BATCH)
    val_loss: float | None = None
    val_miou: float | None = None     # painted classes only: an ignored class is out of the mean
    best_epoch: int | None = None     # 1-based epoch of best.pt so far
    best_checkpoint: Path | None = None
    history: tuple[dict, ...] = ()    # the metrics.csv rows so far


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a DDU-Net (or a U-Net baseline) and write checkpoints the plugin loads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="synthetic", help="which task to train on")
    data.add_argument("--data", type=Path, help="folder: images/ + masks/ (or train/ val/ test/ holding them)")
    data.add_argument("--subdomains", type=int, metavar="K", help="a 1 x K strip of subdomains (synthetic: K=2)")
    data.add_argument("--grid", type=int, nargs=2, metavar=("R", "C"), help="an R x C grid of subdomains")
    data.add_argument("--subdomain-size", type=int, nargs=2, metavar=("H", "W"), default=(32, 32),
                      help="subdomain height and width in pixels")
    data.add_argument("--train-size", type=int, default=4000, help="synthetic training images")
    data.add_argument("--val-size", type=int, default=1000, help="synthetic validation images")
    data.add_argument("--test-size", type=int, default=1000, help="synthetic test images")
    data.add_argument("--samples-per-epoch", type=int,
                      help="random crops per epoch for image datasets (default: as many as tile the training set)")
    data.add_argument("--eval-samples", type=int,
                      help="use at most this many validation and test samples (evenly spaced; quick runs)")
    data.add_argument("--num-classes", type=int, help="image datasets: number of classes (default: max label + 1)")
    data.add_argument("--class-names", nargs="+", help="image datasets: one name per class")
    data.add_argument("--channels", type=int, nargs="+", metavar="BAND",
                      help="image datasets: the bands to train on, by index and in this order, e.g. --channels 3 2 1 "
                           "(default: every band; any number)")
    data.add_argument("--normalization", choices=value_ranges.MODES, default="global",
                      help="how images are scaled before the training set's mean/std (recorded; inference applies "
                           "it): global: raw values (paper 001); percentile: each image's p1..p99 to 0..1; dtype: "
                           "divided by the dtype's maximum (255, 65535)")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                      help="random flips and rot90 (default: on for image datasets, off for synthetic)")
    data.add_argument("--lake-share", type=float, default=0.0, metavar="P",
                      help="bluemarble-lakes: this share of training crops holds a lake pixel (rare-class sampling)")
    data.add_argument("--ignore-index", type=int, metavar="N",
                      help="sparse masks: pixels labelled N count in neither loss nor metrics (e.g. 255, or 0 for "
                           "napari's unlabelled)")

    model = p.add_argument_group("model (paper 001 notation DDU-Net(D, F, C))")
    model.add_argument("--depth", type=int, default=3, help="D: pooling steps of the subnetwork")
    model.add_argument("--base-channels", type=int, default=4, help="channels of the first level")
    model.add_argument("--comm-features", type=int, default=16, help="F: bottleneck channels communicated (0: none)")
    model.add_argument("--no-communication", action="store_true",
                       help="C=N: the communication network sees each subdomain alone")
    model.add_argument("--comm-layers", type=int, default=3, help="conv layers of the communication network")
    model.add_argument("--comm-kernel", type=int, default=5, help="kernel size of the communication network")
    model.add_argument("--dropout", type=float, default=0.1, help="Dropout2d rate")
    model.add_argument("--encoder", choices=("unet", "resnet18"), default="unet")
    model.add_argument("--pretrained", type=Path, help="resnet18: torchvision-style state dict file for the trunk")
    model.add_argument("--freeze-encoder", action="store_true", help="resnet18: keep the pretrained trunk fixed")
    model.add_argument("--baseline", action="store_true",
                       help="plain U-Net: F=0 on the whole crop as a single 1x1 subdomain")

    opt = p.add_argument_group("optimisation (paper 001 Table X)")
    opt.add_argument("--epochs", type=int, default=40, help="maximum number of epochs")
    opt.add_argument("--min-epochs", type=int, default=20, help="no early stop before this many epochs")
    opt.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs)")
    opt.add_argument("--lr-patience", type=int, default=3, help="halve the learning rate after this many bad epochs")
    opt.add_argument("--batch-size", type=int, default=16)
    opt.add_argument("--lr", type=float, default=0.008, help="initial learning rate (Adam 0.9, 0.999)")
    opt.add_argument("--dice", choices=losses.DICE_FORMS, default="per-class",
                     help="dice loss form: per-class mean, or Eq. (1) summed over classes")
    opt.add_argument("--ce-weight", type=float, default=0.0, help="add this times the cross entropy to the loss")
    opt.add_argument("--clip", type=float, default=0.0, help="clip the gradient norm to this value (0: off)")
    opt.add_argument("--amp", nargs="?", const="auto", choices=("auto", "bf16", "fp16"),
                     help="mixed precision (auto: bf16 on CPU, fp16 on CUDA)")

    run = p.add_argument_group("run")
    run.add_argument("--devices", default="cpu", help="comma-separated devices, e.g. cpu or cuda:0,cuda:1")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--output", type=Path, required=True, help="directory for checkpoints, metrics.csv, curves.png")
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run's files in OUTPUT (only those: " + ", ".join(OUTPUT_FILES)
                          + "), once the first new epoch is written")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="parameter precision")
    run.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def resolve_geometry(args: argparse.Namespace) -> tuple[tuple[int, int], tuple[int, int]]:
    """(data grid, subdomain size) from --subdomains / --grid / --subdomain-size."""
    if args.subdomains is not None and args.grid is not None:
        raise TrainingError("give either --subdomains K or --grid R C, not both")
    if args.grid is not None:
        grid = tuple(args.grid)
    elif args.subdomains is not None:
        grid = (1, args.subdomains)
    else:
        grid = (1, 2) if args.dataset == "synthetic" else (2, 2)
    if min(grid) < 1:
        raise TrainingError(f"the subdomain grid must be at least 1 x 1, got {grid[0]} x {grid[1]}")
    size = tuple(args.subdomain_size)
    if min(size) < 1:
        raise TrainingError(f"--subdomain-size must be positive, got {size}")
    return grid, size


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible option combinations before anything heavy happens."""
    positive = ("epochs", "batch_size", "train_size", "val_size", "test_size", "eval_samples", "samples_per_epoch")
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0:
        raise TrainingError("--lr must be positive")
    if args.dataset in ("folder", "zarr") and args.data is None:
        raise TrainingError(f"--dataset {args.dataset} needs --data DIR")
    if args.channels is not None and args.dataset not in ("folder", "zarr"):
        raise TrainingError(f"--channels applies to --dataset folder or zarr, not {args.dataset}")
    if args.lake_share and args.dataset != "bluemarble-lakes":
        raise TrainingError(f"--lake-share applies to --dataset bluemarble-lakes, not {args.dataset}")
    if args.pretrained is not None and args.encoder != "resnet18":
        raise TrainingError("--pretrained only applies to --encoder resnet18")
    check_output(args)


def check_output(args: argparse.Namespace) -> None:
    """An earlier run's files are continued (--resume) or replaced (--overwrite), never silently."""
    out = args.output
    if args.resume and args.overwrite:
        raise TrainingError("give --resume (continue the run in --output) or --overwrite (replace it), not both")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--output {out} is a file, not a folder")
    if args.resume:
        if not (out / "last.pt").is_file():
            raise TrainingError(f"--resume: {out / 'last.pt'} does not exist")
        return
    earlier = [name for name in OUTPUT_FILES if (out / name).exists()]
    if earlier and not args.overwrite:
        raise TrainingError(f"{out} already holds {', '.join(earlier)} of an earlier run; continue it with --resume "
                            "or replace it with --overwrite")


def build_task(args: argparse.Namespace, grid: tuple[int, int], size: tuple[int, int]) -> datasets.TaskData:
    task = _build_task(args, grid, size)
    if args.eval_samples is not None:
        task.val = datasets.evenly_spaced(task.val, args.eval_samples)
        task.test = datasets.evenly_spaced(task.test, args.eval_samples)
    return task


def _build_task(args: argparse.Namespace, grid: tuple[int, int], size: tuple[int, int]) -> datasets.TaskData:
    crop = (grid[0] * size[0], grid[1] * size[1])
    augment = args.augment if args.augment is not None else args.dataset != "synthetic"
    if args.dataset == "synthetic":
        return datasets.synthetic_task(grid, size, args.seed, (args.train_size, args.val_size, args.test_size),
                                       args.normalization)
    if args.dataset == "bluemarble":
        return datasets.bluemarble_task(crop, args.seed, augment, args.samples_per_epoch, args.normalization)
    if args.dataset == "bluemarble-lakes":
        from training.lakes import lakes_task

        return lakes_task(crop, args.seed, augment, args.samples_per_epoch, args.normalization, args.lake_share)
    return datasets.pairs_task(args.data, args.dataset, crop, args.seed, augment, args.samples_per_epoch,
                               args.num_classes, args.class_names, args.channels, args.normalization,
                               args.ignore_index)


def build_config(args: argparse.Namespace, task: datasets.TaskData) -> ModelConfig:
    return ModelConfig(
        in_channels=task.in_channels,
        num_classes=task.num_classes,
        depth=4 if args.encoder == "resnet18" else args.depth,
        base_channels=args.base_channels,
        comm_features=0 if args.baseline else args.comm_features,
        communicate=not args.no_communication,
        comm_layers=args.comm_layers,
        comm_kernel=args.comm_kernel,
        dropout=args.dropout,
        encoder=args.encoder,
        freeze_encoder=args.freeze_encoder,
        class_names=task.class_names,
    )


def parse_devices(spec: str) -> list[torch.device]:
    """The comma-separated ``--devices`` list through the one parser (DeviceError names what is available)."""
    return resolve_devices([name for name in spec.split(",") if name.strip()])


def amp_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    if args.amp is None:
        return None
    if args.amp == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]


# -- training state -----------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the global torch RNG (dropout) for one epoch: resuming needs no RNG replay."""
    return int(np.random.default_rng([seed, 7919, epoch]).integers(2**62))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch) + 1)
    return torch.randperm(n, generator=generator).tolist()


def batches(dataset, order: list[int], batch_size: int, workers: int):
    """Yield stacked (images, masks) in ``order``."""
    if workers > 0:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers)
        yield from loader
        return
    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size]]
        yield torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


# -- the loop -----------------------------------------------------------------------------------


class Trainer:
    """One model, its optimiser and the way a batch turns into a loss (local or distributed)."""

    def __init__(self, args: argparse.Namespace, task: datasets.TaskData, config: ModelConfig,
                 grid: tuple[int, int], subdomain: tuple[int, int]) -> None:
        self.args = args
        self.task = task
        self.config = config
        self.grid = (1, 1) if args.baseline else grid
        self.subdomain = task.crop if args.baseline else subdomain
        self.devices = parse_devices(args.devices)
        self.device = self.devices[0]
        self.dtype = torch.float64 if args.dtype == "float64" else torch.float32
        self.amp = amp_dtype(args, self.device)
        self.dist = None
        model = DDUNet(config)
        if args.pretrained is not None:
            from napari_ddunet.core.network.resnet import load_resnet18_trunk

            load_resnet18_trunk(model.encoder, args.pretrained)
        self.model = model.to(self.device, self.dtype)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self.dist = distributed.SubdomainParallel(self.model, self.grid, self.devices)
        self.forward_model = self._parallel_forward()
        self.mean = torch.tensor(task.mean, dtype=self.dtype, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(task.std, dtype=self.dtype, device=self.device).view(1, -1, 1, 1)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=0.5, patience=args.lr_patience
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 and self.device.type == "cuda" else None

    @property
    def rank(self) -> int:
        return 0 if self.dist is None else self.dist.rank

    def _parallel_forward(self):
        """Several devices in one process (napari_ddunet.core.network.parallel): exact, with synchronised BatchNorm."""
        if len(self.devices) < 2:
            return None
        if self.dist is not None:
            raise TrainingError("use one device per process under torchrun (--devices with a single device)")
        from napari_ddunet.core.network.parallel import DataParallelDDUNet

        return DataParallelDDUNet(self.model, self.devices, comm_device=self.device, output_device=self.device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.device, self.dtype) - self.mean) / self.std

    def autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def logits_and_target(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(images)
        masks = masks.to(self.device)
        with self.autocast():
            if self.dist is not None:
                return self.dist.forward(x), self.dist.local_target(masks)
            if self.forward_model is not None:
                return self.forward_model(x, self.grid), masks
            return self.model(x, self.grid), masks

    def loss_sums(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dice sums and (optionally) the summed cross entropy, reduced over ranks when distributed."""
        ignore = self.args.ignore_index
        sums = losses.dice_sums(logits, target, ignore)
        ce = losses.cross_entropy_sum(logits, target, ignore) if self.args.ce_weight > 0 else None
        if self.dist is not None:
            sums = self.dist.all_reduce(sums)
            ce = None if ce is None else self.dist.all_reduce(ce)
        return sums, ce

    def loss(self, sums: torch.Tensor, ce: torch.Tensor | None, pixels: int) -> torch.Tensor:
        loss = losses.dice_from_sums(sums, self.args.dice)
        if ce is not None:
            loss = loss + self.args.ce_weight * ce / max(pixels, 1)  # max: a batch of only ignored pixels
        return loss

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.task.train) / self.args.batch_size)

    def train_epoch(self, epoch: int) -> float:
        return drive(self.train_epoch_iter(epoch))

    def train_epoch_iter(self, epoch: int) -> Generator[tuple[int, float], None, float]:
        """One epoch; yields (batches done, running mean loss) after every batch, returns the mean loss."""
        self.model.train()
        torch.manual_seed(epoch_seed(self.args.seed, epoch))
        datasets.set_epoch(self.task.train, epoch)
        order = epoch_order(len(self.task.train), self.args.seed, epoch)
        total, count = 0.0, 0
        steps = batches(self.task.train, order, self.args.batch_size, self.args.workers)
        for done, (images, masks) in enumerate(steps, start=1):
            logits, target = self.logits_and_target(images, masks)
            sums, ce = self.loss_sums(logits, target)
            loss = self.loss(sums, ce, losses.pixel_count(masks, self.args.ignore_index))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if self.dist is not None:
                self.dist.average_gradients()
            if self.args.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
            yield done, total / count
        return total / count

    def evaluate(self, dataset) -> dict[str, float]:
        """Dataset-level dice loss and the metrics of Eq. (2)-(3) (sums over all images first)."""
        return drive(self.evaluate_iter(dataset))

    @torch.no_grad()
    def evaluate_iter(self, dataset) -> Generator[int, None, dict[str, float]]:
        """:meth:`evaluate`, yielding the batches done after each (a large validation set stays cancellable)."""
        self.model.eval()
        confusion = ConfusionMatrix(self.config.num_classes, self.args.ignore_index)
        sums_total, ce_total, pixels = None, None, 0
        order = list(range(len(dataset)))
        steps = batches(dataset, order, self.args.batch_size, self.args.workers)
        for done, (images, masks) in enumerate(steps, start=1):
            logits, target = self.logits_and_target(images, masks)
            sums, ce = self.loss_sums(logits, target)
            sums_total = sums if sums_total is None else sums_total + sums
            ce_total = ce if ce_total is None else ce_total + ce
            pixels += losses.pixel_count(masks, self.args.ignore_index)
            confusion.update(logits.argmax(1), target)
            yield done
        if self.dist is not None:
            confusion.matrix = self.dist.all_reduce_counts(confusion.matrix)
        result = {"loss": float(self.loss(sums_total, ce_total, pixels))}
        result.update(confusion.compute(self.config.class_names))
        return result

    def save(self, path: Path, metrics: dict[str, Any], training_args: dict[str, Any],
             state: dict[str, Any] | None = None) -> None:
        """Write a checkpoint of the model; with ``state`` (optimizer, scheduler, RNG...) one to resume from."""
        checkpoint = {
            "class_names": self.task.class_names,
            "class_colors": self.task.class_colors,
            "normalization": self.task.normalization(),
            "subdomain_size": self.subdomain,
            "training_args": training_args,
            "metrics": metrics,
        }
        if state is None:
            save_checkpoint(path, self.model, **checkpoint)
        else:
            save_training_state(path, self.model, state, **checkpoint)


def _json_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items()}


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _relay(steps: Generator[Any, None, Any], to_event: Callable[[Any], TrainingEvent]
           ) -> Generator[TrainingEvent, None, Any]:
    """Yield ``to_event(step)`` for every step of ``steps``; return its value."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield to_event(step)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run a whole training; returns the test metrics of the best checkpoint."""
    return drive(train_iter(args))


def train_iter(args: argparse.Namespace, task: datasets.TaskData | None = None, config: ModelConfig | None = None,
               weights: dict[str, torch.Tensor] | None = None) -> Generator[TrainingEvent, None, dict[str, Any]]:
    """The one training loop (CLI and :mod:`training.session`): yields a BATCH event after every batch, an
    EPOCH event once the epoch's files are written, FINISHED after the test step; returns the test metrics.

    ``task`` replaces the dataset the options name (in-memory arrays), ``config`` the options' network and
    ``weights`` its initial parameters (fine-tuning). Closing the generator stops the run between two batches:
    best.pt and last.pt are then those of the last finished epoch.
    """
    check_args(args)
    last = args.output / "last.pt"
    resumed = read_training_checkpoint(last) if args.resume else None  # a damaged file: one line, before the data
    if args.threads:
        torch.set_num_threads(args.threads)
    grid, size = resolve_geometry(args)
    if task is None:
        task = build_task(args, grid, size)
    if config is None:
        config = build_config(args, task)
    if resumed is not None:
        check_same_model(last, resumed[0], config)
    torch.manual_seed(args.seed)
    trainer = Trainer(args, task, config, grid, size)
    if weights is not None and resumed is None:
        trainer.model.load_state_dict(weights)
    writer = trainer.rank == 0
    out = args.output
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    training_args = _json_args(args)
    history: list[dict[str, Any]] = []
    best_loss, best_epoch, start = math.inf, -1, 0
    if resumed is not None:
        history, best_loss, best_epoch, start = restore(trainer, last, *resumed[1:])
    log = (lambda *a: None) if args.quiet or not writer else (lambda *a: print(*a, flush=True))
    log(f"{config.notation} on a {trainer.grid[0]}x{trainer.grid[1]} grid of {trainer.subdomain[0]}x"
        f"{trainer.subdomain[1]} subdomains, {len(task.train)} training samples, {args.epochs} epochs max")
    per_epoch = trainer.batches_per_epoch()

    def event(phase: TrainingPhase, epoch: int, batch: int, **values: Any) -> TrainingEvent:
        best = (best_epoch + 1, out / "best.pt") if best_epoch >= 0 else (None, None)
        return TrainingEvent(phase, epoch, args.epochs, batch, per_epoch, best_epoch=best[0], best_checkpoint=best[1],
                             history=tuple(dict(row) for row in history), **values)

    stopped, earlier = False, args.overwrite
    for epoch in range(start, args.epochs):
        tic = time.perf_counter()
        train_loss = yield from _relay(trainer.train_epoch_iter(epoch), lambda step, epoch=epoch: event(
            TrainingPhase.BATCH, epoch, step[0], train_loss=step[1]))
        val = yield from _relay(trainer.evaluate_iter(task.val), lambda _, epoch=epoch, loss=train_loss: event(
            TrainingPhase.BATCH, epoch, per_epoch, train_loss=loss))   # validating: the bar stays full, Cancel works
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.scheduler.step(val["loss"])
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **_prefixed("val", val),
               "seconds": round(time.perf_counter() - tic, 2)}
        history.append(row)
        improved = val["loss"] < best_loss
        if improved:
            best_loss, best_epoch = val["loss"], epoch
        stopped = epoch + 1 >= args.min_epochs and epoch - best_epoch >= args.patience
        if writer:
            if earlier:  # --overwrite: the earlier run's files go only now that this run has an epoch to write
                for name in OUTPUT_FILES:
                    (out / name).unlink(missing_ok=True)
                earlier = False
            if improved:
                trainer.save(out / "best.pt", {"epoch": epoch + 1, **_prefixed("val", val)}, training_args)
            trainer.save(out / "last.pt", {"epoch": epoch + 1, **_prefixed("val", val)}, training_args, {
                "epoch": epoch, "best_loss": best_loss, "best_epoch": best_epoch, "stopped": stopped,
                "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                "history": history, "torch_rng": torch.get_rng_state(),
            })
            write_metrics_csv(out / "metrics.csv", history)
            from training.plots import plot_curves

            plot_curves(history, out / "curves.png", config.notation)
        log(f"epoch {epoch + 1:3d}  train {train_loss:.4f}  val {val['loss']:.4f}  mIoU {val['miou']:.4f}  "
            f"lr {lr:.2e}  {row['seconds']:.1f}s" + ("  *" if improved else ""))
        yield event(TrainingPhase.EPOCH, epoch + 1, per_epoch, train_loss=train_loss, val_loss=val["loss"],
                    val_miou=val["miou"])
        if stopped:
            log(f"early stop: no better validation loss for {args.patience} epochs")
            break
    metrics = finish(trainer, args, out, training_args, best_epoch, writer, log)
    epochs_run = len(history)
    final = history[-1] if history else {}
    yield event(TrainingPhase.FINISHED, epochs_run, per_epoch, train_loss=final.get("train_loss"),
                val_loss=final.get("val_loss"), val_miou=final.get("val_miou"))
    return metrics


def check_same_model(last: Path, info: CheckpointInfo, config: ModelConfig) -> None:
    """--resume continues the model it was started with: the options must describe the same config."""
    saved, wanted = info.config.to_dict(), config.to_dict()
    changed = [key for key in wanted if saved.get(key) != wanted[key]]
    if changed:
        def values(config: dict[str, Any]) -> str:
            return ", ".join(f"{key}={str(config.get(key))[:60]}" for key in changed[:4])

        raise TrainingError(f"--resume: {last} holds {info.config.notation} with {values(saved)}, the options give "
                            f"{values(wanted)}; resume with its options, or start afresh with --overwrite")


def restore(trainer: Trainer, last: Path, state_dict: dict[str, torch.Tensor],
            state: dict[str, Any]) -> tuple[list[dict[str, Any]], float, int, int]:
    """Continue from last.pt: weights, optimiser, scheduler, history, and the random stream where it stood."""
    try:
        trainer.model.load_state_dict(state_dict)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        history = [dict(row) for row in state["history"]]
        best_loss, best_epoch, epoch = float(state["best_loss"]), int(state["best_epoch"]), int(state["epoch"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        detail = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise TrainingError(f"--resume: {last} holds a damaged training state ({detail})") from None
    return history, best_loss, best_epoch, trainer.args.epochs if state.get("stopped") else epoch + 1


def finish(trainer: Trainer, args, out: Path, training_args, best_epoch: int, writer: bool, log) -> dict[str, Any]:
    """Evaluate best.pt on the test split and store the test metrics in it."""
    if trainer.dist is not None:
        trainer.dist.barrier()
    info, state_dict = read_checkpoint_info(out / "best.pt")
    trainer.model.load_state_dict(state_dict)
    test = trainer.evaluate(trainer.task.test)
    metrics = {"best_epoch": best_epoch + 1, **info.metrics, **_prefixed("test", test)}
    if writer:
        trainer.save(out / "best.pt", metrics, training_args)
        (out / "summary.json").write_text(json.dumps({"notation": trainer.config.notation, **metrics}, indent=2))
    names = trainer.config.class_names
    log("test: mIoU {:.4f}  ".format(test["miou"]) + "  ".join(f"IoU[{n}] {test[f'iou/{n}']:.4f}" for n in names))
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except DDUNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
