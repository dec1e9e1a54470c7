"""``napari-ddunet predict CKPT INPUT OUTPUT``: segment an image into a zarr store, with a progress bar.

Under torchrun (RANK/WORLD_SIZE in the environment) every process runs this same command; they join
one process group (gloo on CPU, nccl on CUDA) and each writes its own band of subdomain rows.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from napari_ddunet.cli import EXIT_CANCELLED, EXIT_CODES_HELP, HelpFormatter, cancel_on_interrupt
from napari_ddunet.core.inference.progress import Phase, ProgressEvent


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment an image (TIFF, zarr, OME-Zarr, .npy) into a zarr v3 / OME-Zarr store",
        description="Segment INPUT with the DDU-Net checkpoint CKPT and write labels (an OME-Zarr multiscale "
                    "pyramid) and optional probabilities/features to the zarr v3 store OUTPUT. The result equals "
                    "the whole-image forward pass; memory stays within --memory-budget.",
        epilog=EXIT_CODES_HELP, formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.pt)")
    parser.add_argument("input", metavar="INPUT", help="image: .tif/.tiff, .zarr, .ome.zarr, .png, .jpg or .npy")
    parser.add_argument("output", metavar="OUTPUT", help="output zarr store (a folder, e.g. out.zarr)")
    parser.add_argument("--subdomain-size", nargs=2, type=int, metavar=("H", "W"),
                        help="subdomain size in pixels (default: the checkpoint's training size)")
    parser.add_argument("--devices", nargs="+", default=None, metavar="DEV",
                        help="cpu, cuda, cuda:N, mps or auto (several allowed; default auto, or the rank's GPU "
                             "under torchrun)")
    parser.add_argument("--memory-budget", default=None, metavar="SIZE",
                        help="memory budget, e.g. 2GB or 512MiB: the run's memory stays within it (the schedule and "
                             "every queue follow it; one that nothing fits is refused, naming the smallest; "
                             "default 2GB)")
    parser.add_argument("--schedule", default=None, choices=("monolithic", "wavefront", "recompute", "streaming"),
                        help="force an exact schedule instead of choosing by the budget")
    parser.add_argument("--features", action="store_true",
                        help="also store the bottleneck mosaics before and after communication")
    parser.add_argument("--probabilities", action="store_true", help="also store class probabilities (float16)")
    parser.add_argument("--logits", action="store_true", help="also store raw logits (compute dtype)")
    parser.add_argument("--channel-axis", type=int, default=None, choices=(0, -1),
                        help="channel axis of a 3D image: 0 (CYX) or -1 (YXC); guessed when absent")
    parser.add_argument("--channels", nargs="+", type=int, default=None, metavar="BAND",
                        help="bands of the channel axis to feed the model, by index and in this order, e.g. "
                             "--channels 2 1 0 for R, G, B of a B, G, R, NIR image (only these bands are read); "
                             "default: every band, when their count is the model's")
    parser.add_argument("--axes", default=None, metavar="AXES",
                        help="name the input's axes, one letter each from T, C, Z, Y, X (e.g. ZYX, TZYX, TCZYX), "
                             "for a file that does not record them (.npy, plain zarr); a stack's t/z planes are "
                             "segmented one by one into labels with the same leading axes")
    parser.add_argument("--planes", nargs="+", type=_plane, default=None, metavar="PLANE",
                        help="segment only these planes of a stack: z (or t) indices, or t,z pairs for a TZ stack "
                             "(e.g. --planes 0 5 9, --planes 1,3); the others stay 0 (default: every plane)")
    parser.add_argument("--no-communication", action="store_true",
                        help="switch the exchange off (C=N behaviour with the same weights)")
    parser.add_argument("--float64", action="store_true", help="compute in float64 (slow; for exactness checks)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run into OUTPUT")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT if it is a previous napari-ddunet store (never anything else)")
    parser.add_argument("--format", choices=("zarr", "geotiff"), default=None,
                        help="geotiff: also write the labels as a tiled, LZW-compressed GeoTIFF with the input "
                             "GeoTIFF's georeferencing (OUTPUT labels.tif runs into labels.zarr and writes "
                             "labels.tif; OUTPUT labels.zarr writes labels.tif beside it); default: by OUTPUT's "
                             "suffix, .tif/.tiff meaning geotiff")
    parser.add_argument("--normalization", choices=("checkpoint", "percentile", "dtype"), default=None,
                        help="checkpoint: the mode the model was trained with (default; older checkpoints: its "
                             "global mean/std); percentile: each band's p1..p99 of this image onto the training "
                             "data's (16-bit microscopy or satellite data into an 8-bit model); dtype: the image "
                             "dtype's range onto the training dtype's. An input far from the training data's "
                             "values is named on stderr before the run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from napari_ddunet.core.checkpoints.format import load_checkpoint
    from napari_ddunet.core.errors import DDUNetError
    from napari_ddunet.core.inference.distributed import DistContext
    from napari_ddunet.core.inference.engine import segment_iter
    from napari_ddunet.core.inference.process_group import destroy_process_group
    from napari_ddunet.core.inference.progress import drive
    from napari_ddunet.core.inference.sink import open_output
    from napari_ddunet.core.io import geotiff

    if args.resume and args.overwrite:
        raise DDUNetError("--resume and --overwrite exclude each other")
    export = None
    if geotiff.wants_geotiff(args.output, args.format):
        export = geotiff.plan_export(args.input, args.output, overwrite=args.overwrite)
    model = load_checkpoint(args.checkpoint, "cpu")
    context = DistContext.from_env()
    devices = args.devices
    if devices is None:
        devices = [str(context.device)] if context is not None and context.device.type == "cuda" else ["auto"]
    cancel = threading.Event()
    steps = segment_iter(
        args.input, model, subdomain_size=tuple(args.subdomain_size) if args.subdomain_size else None,
        devices=devices, output=args.output if export is None else export.store, memory_budget=args.memory_budget,
        features=args.features,
        probabilities=args.probabilities, logits=args.logits, channel_axis=args.channel_axis, channels=args.channels,
        communicate=False if args.no_communication else None, resume=args.resume, overwrite=args.overwrite,
        dtype=torch.float64 if args.float64 else torch.float32, schedule=args.schedule, distributed=context,
        axes=args.axes, planes=args.planes, cancel=cancel, normalization=args.normalization,
    )
    rank = "" if context is None else f"[rank {context.rank}/{context.world}] "
    bar = _ProgressBar(rank, args.quiet)
    ended_well = False
    try:
        with cancel_on_interrupt(cancel), _value_range_lines(rank):   # Ctrl-C cancels: a consistent store (130)
            result = drive(steps, bar.show, cancel)
        ended_well = not result.cancelled
    finally:
        bar.close()
        if context is not None:
            destroy_process_group(together=ended_well)
    if result.cancelled:
        print(f"{rank}napari-ddunet predict: cancelled; {result.output} is resumable with --resume", file=sys.stderr)
        return EXIT_CANCELLED
    if context is None or context.rank == 0:
        print(f"wrote {result.output} ({result.schedule} schedule, grid {result.grid[0]}x{result.grid[1]})",
              file=sys.stderr)
        if export is not None:
            stored = open_output(export.store)
            geotiff.write_labels(stored["labels"], export.tiff, export.georeference,
                                 stored["attrs"].get("class_colors"))
            print(f"wrote {export.tiff} (GeoTIFF, georeferenced as {args.input})", file=sys.stderr)
    return 0


def _plane(text: str) -> tuple[int, ...]:
    """A --planes entry: "5" (a Z or T stack) or "1,3" (t, z)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a plane: give an index (5) or t,z (1,3)") from None


@contextlib.contextmanager
def _value_range_lines(prefix: str) -> Iterator[None]:
    """Each ValueRangeWarning of the run (raised before any work) as one stderr line, every time."""
    from napari_ddunet.core.io.normalization import ValueRangeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", ValueRangeWarning)
        shown = warnings.showwarning

        def show(message, category, *rest) -> None:
            if issubclass(category, ValueRangeWarning):
                print(f"{prefix}napari-ddunet predict: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, *rest)

        warnings.showwarning = show
        yield


class _ProgressBar:
    """The first event's message on stderr, then a bar of finished subdomains (the events' done/total)."""

    def __init__(self, prefix: str, quiet: bool) -> None:
        self.prefix, self.quiet = prefix, quiet
        self.bar: Any = None

    def show(self, event: ProgressEvent) -> None:
        if event.phase == Phase.PREPARE:
            from tqdm import tqdm

            print(f"{self.prefix}{event.message}", file=sys.stderr)
            self.bar = tqdm(total=event.total, initial=event.done, unit="subdomain", desc=f"{self.prefix}segment",
                            disable=self.quiet, file=sys.stderr)
        elif self.bar is not None and event.done > self.bar.n:
            self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
