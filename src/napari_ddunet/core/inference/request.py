"""A segmentation request, built and validated in full before any work starts.

:func:`build_request` turns the user's arguments into a frozen :class:`SegmentRequest`: the model
loaded, the image opened and scanned for NaN/inf where the run reads, the grid planned, the devices
resolved, the memory budget parsed, the output location checked. A bad request raises here, so a
caller learns of it before the first event, and the stages after it never re-check their inputs.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.devices import resolve_devices
from napari_ddunet.core.inference.grid import GridPlan, plan_grid
from napari_ddunet.core.inference.output_guard import check_output, read_locations
from napari_ddunet.core.inference.schedule import DEFAULT_MEMORY_BUDGET, SCHEDULES
from napari_ddunet.core.inference.stack import Stack, open_stack, plane_indices
from napari_ddunet.core.io import normalization as value_ranges
from napari_ddunet.core.io.images import ImageSource, InputError, check_finite, check_readable, open_image
from napari_ddunet.core.io.normalization import Applied
from napari_ddunet.core.io.ome import Calibration
from napari_ddunet.core.network.model import DDUNet

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


class EngineError(DDUNetError):
    """A segmentation request that cannot run as given."""


@dataclass(frozen=True)
class OutputPolicy:
    """Where results go and which optional arrays are kept."""

    path: Path | None
    resume: bool
    probabilities: bool
    logits: bool
    features: bool
    overwrite: bool = False
    reads: tuple[Path, ...] = ()     # every file and folder the run reads (output_guard.read_locations)


@dataclass(frozen=True, eq=False)
class SegmentRequest:
    """Everything a run needs, checked; ``rect`` is the grid (r0, r1, c0, c1) the run computes."""

    model: DDUNet
    source: ImageSource
    plan: GridPlan
    rect: tuple[int, int, int, int]
    devices: tuple[torch.device, ...]
    dtype: torch.dtype
    budget: int
    schedule: str | None
    exchange: bool
    halo_rows: int
    mean: np.ndarray | None
    std: np.ndarray | None
    output: OutputPolicy
    distributed: Any = None
    stack: Stack | None = None                  # a stack: its planes run one by one (core/inference/stack.py)
    planes: tuple[tuple[int, ...], ...] = ()    # the stack's planes this run computes
    open_plane: Callable[[Any], ImageSource] | None = None   # one plane as ``source`` is opened
    calibration: Calibration | None = None      # where the input lies in physical space (its axes by name)
    normalization: Applied | None = None        # the per-band (x - mean) / std above: its mode and image numbers
    warnings: tuple[str, ...] = ()              # the value-range warnings raised for it, for the first event

    def for_plane(self, index: tuple[int, ...]) -> SegmentRequest:
        """This request on one plane of its stack: the same model, grid and output, that plane's pixels."""
        return replace(self, source=self.open_plane(self.stack.plane(index)), stack=None, planes=())

    @property
    def per_tile_comm(self) -> bool:
        """The communication network runs on each subdomain alone (the model has one, exchange is off)."""
        return self.model.comm is not None and not self.exchange

    @property
    def sent_features(self) -> int:
        """F: the bottleneck channels a subdomain hands to the communication network (0 without one)."""
        return self.model.config.comm_features if self.model.comm is not None else 0

    @property
    def cols(self) -> list[int]:
        return list(range(self.rect[2], self.rect[3]))

    @property
    def world(self) -> int:
        return 1 if self.distributed is None else self.distributed.world

    def own_rows(self) -> tuple[int, int]:
        """The grid rows this process computes (all of them outside torchrun)."""
        r0, r1 = self.rect[:2]
        return self.distributed.own_rows(r0, r1, self.halo_rows) if self.world > 1 else (r0, r1)


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from 2e9, "2GB", "1.5 GiB", "512MB" (decimal units; KiB/MiB/GiB binary)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise EngineError(f"cannot read memory budget {value!r}; use e.g. 2GB, 512MiB or a number of bytes")
        number, unit = float(match.group(1)), match.group(2).lower()
    try:
        number = float(number)   # 1e999 reads as inf, 10**400 does not fit a float: both are no size
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EngineError(f"memory budget {value!r:.40} is not a finite size; use e.g. 2GB, 512MiB or a number "
                          "of bytes")
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise EngineError(f"memory budget must be positive, got {value!r}")
    return result


def build_request(image: Any, model: Any, *, subdomain_size: tuple[int, int] | None, devices: str | Sequence[str],
                  output: str | Path | None, memory_budget: int | str | None, features: bool, probabilities: bool,
                  logits: bool, channel_axis: int | None, region: tuple[int, int, int, int] | None,
                  communicate: bool | None, resume: bool, overwrite: bool, dtype: torch.dtype,
                  schedule: str | None, distributed: Any, channels: Sequence[int] | None = None,
                  axes: str | None = None, planes: Sequence[int | Sequence[int]] | None = None,
                  calibration: Calibration | Mapping[str, Any] | None = None,
                  normalization: str | None = None) -> SegmentRequest:
    """Check every argument of :func:`~napari_ddunet.core.inference.engine.segment_iter`; raise on the first bad one."""
    net = _resolve_model(model)
    device_list = tuple(resolve_devices(devices))
    if schedule is not None and schedule not in SCHEDULES:
        raise EngineError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    budget = parse_memory(memory_budget) or DEFAULT_MEMORY_BUDGET
    opened, stack = open_stack(image, axes)
    if planes is not None and stack is None:
        raise EngineError("planes= chooses planes of a stack (an image with t or z axes); this image is 2D")
    chosen = plane_indices(stack, planes) if stack is not None else ()
    open_plane = partial(open_image, in_channels=net.config.in_channels, channels=channels, trained=_trained_bands(net),
                         channel_axis=channel_axis if stack is None else stack.channel_axis(channel_axis))
    try:
        source = open_plane(opened if stack is None else stack.plane(chosen[0]))
    except InputError as error:
        raise InputError(_with_stack_hint(str(error), opened)) from None
    plan = plan_grid(source.shape, _subdomain_size(net, source, subdomain_size), net.config.downsampling)
    rect = plan.tiles_in_region(region)
    applied = _normalization(net, planes_to_sample(source, stack, open_plane), normalization)
    mean, std = (None, None) if applied is None else (applied.offset, applied.scale)
    reads = read_locations(image, source.array, *opened.levels)
    path = _output_path(output, overwrite, resume, distributed, reads)
    value_warnings = _warn_value_range(net, applied)
    r0, r1, c0, c1 = rect
    top, _, left, _ = plan.cropped_box(r0, c0)
    _, bottom, _, right = plan.cropped_box(r1 - 1, c1 - 1)
    # only pixels wider than float32 can overflow the float32 cast (a float32 image is scanned for NaN/inf alone)
    wide = np.issubdtype(source.dtype, np.floating) and np.dtype(source.dtype).itemsize > 4
    limit = float(np.finfo(np.float32).max) if wide and dtype != torch.float64 else None
    _check_finite_planes(source, stack, chosen, open_plane, (top, bottom, left, right), limit)
    check_readable(source, (top, bottom, left, right))
    exchange, halo_rows = _exchange(net, plan, communicate)
    if schedule == "streaming" and exchange:
        raise EngineError("the streaming schedule needs a model without exchange (F=0, C=N or communicate=False)")
    policy = OutputPolicy(path, resume, probabilities, logits, features, overwrite, reads)
    return SegmentRequest(net, source, plan, rect, device_list, dtype, budget, schedule, exchange, halo_rows,
                          mean, std, policy, distributed, stack, chosen, open_plane,
                          _calibration(calibration, source if stack is None else opened), applied, value_warnings)


def _calibration(given: Calibration | Mapping[str, Any] | None, image: Any) -> Calibration | None:
    """The caller's calibration (a napari layer's y/x scale, translate and units), else the input's own."""
    if given is None:
        return image.calibration
    if isinstance(given, Calibration):
        return given
    try:
        return Calibration.of_axes(given.get("axes", ("y", "x")), given.get("scale"), given.get("translate"),
                                   given.get("units"))
    except (TypeError, ValueError, AttributeError) as error:
        raise EngineError(f"cannot use calibration {dict(given)!r}: {error}") from None


def _with_stack_hint(message: str, opened: Any) -> str:
    """A layout error of a 3D image whose axes are not named (a .npy, a TIFF tifffile reads as QYX) also
    says how to segment it as a stack of planes."""
    shape = tuple(opened.array.shape)
    named = opened.axes is not None and bool({"t", "z", "c"} & set(opened.axes))
    if named or len(shape) < 3:
        return message
    if len(shape) > 3:
        examples = {4: "TZYX or ZCYX", 5: "TCZYX"}.get(len(shape), "one letter per axis from T, C, Z, Y, X")
        return f"{message}; for a stack of planes name its axes: --axes {examples} (axes= in Python)"
    if shape[0] >= min(shape[1:]):
        return message
    return f"{message}; or, if its {shape[0]} entries along axis 0 are planes: --axes ZYX (axes='ZYX' in Python)"


def _check_finite_planes(source: ImageSource, stack: Stack | None, planes: tuple[tuple[int, ...], ...],
                         open_plane: Callable[[Any], ImageSource], box: tuple[int, int, int, int],
                         limit: float | None) -> None:
    """:func:`check_finite` over the pixels the run reads: of the image, or of every chosen plane of a stack."""
    if stack is None:
        check_finite(source, box, limit)
        return
    for index in planes:
        try:
            check_finite(open_plane(stack.plane(index)), box, limit)
        except InputError as error:
            raise InputError(f"plane {stack.label(index)}: {error}") from None


def _trained_bands(net: DDUNet) -> list[int] | None:
    """The bands the model was trained on (``--channels`` of training), as its checkpoint records them."""
    info = getattr(net, "info", None)
    bands = info.training_args.get("channels") if info is not None else None
    if not isinstance(bands, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in bands):
        return None
    return bands


def _resolve_model(model: Any) -> DDUNet:
    if isinstance(model, DDUNet):
        return model
    if isinstance(model, str | Path):
        from napari_ddunet.core.checkpoints.format import load_checkpoint

        return load_checkpoint(model, "cpu")
    raise EngineError(f"model must be a DDUNet or a checkpoint path, got {type(model).__name__}")


def _subdomain_size(net: DDUNet, source: ImageSource, size: tuple[int, int] | None) -> tuple[int, int]:
    """The given size, else the checkpoint's training size, else up to 256 px per side."""
    info = getattr(net, "info", None)
    if size is None and info is not None and info.subdomain_size:
        size = info.subdomain_size
    if size is None:
        step = net.config.downsampling
        size = tuple(max(step, min(256, side) // step * step) for side in source.shape)
    return size


def planes_to_sample(source: ImageSource, stack: Stack | None,
                     open_plane: Callable[[Any], ImageSource]) -> list[ImageSource]:
    """The planes a run samples (input fingerprint, value range): the image, or a stack's first, middle and last
    plane, whichever planes the run computes."""
    if stack is None:
        return [source]
    indices = stack.indices()
    picks = sorted({0, len(indices) // 2, len(indices) - 1})
    return [open_plane(stack.plane(indices[i])) for i in picks]


def _normalization(net: DDUNet, sampled: list[ImageSource], choice: str | None) -> Applied | None:
    """The run's normalisation from the checkpoint's record, ``choice`` and a lattice sample of the input,
    computed once here so every subdomain, schedule and resumed run uses the same numbers."""
    info = getattr(net, "info", None)
    norm = info.normalization if info is not None else None
    if norm is None and choice in (None, "checkpoint"):
        value_ranges.check_mode(choice or "checkpoint", value_ranges.CHOICES)
        return None
    if norm is not None and len(norm.mean) != sampled[0].channels:
        raise InputError(f"checkpoint normalisation has {len(norm.mean)} channels, the image {sampled[0].channels}")
    return value_ranges.resolve(norm, choice, value_ranges.image_statistics(sampled))


def _warn_value_range(net: DDUNet, applied: Applied | None) -> tuple[str, ...]:
    """A ValueRangeWarning (one line; the CLI prints it) when the input lies far from the training data, and
    when the run overrides the trained mode; the lines are returned too, for the run's first progress event
    (the GUI's notification: the warnings module's global state is no channel between threads)."""
    info = getattr(net, "info", None)
    lines = tuple(line for line in (value_ranges.override_note(applied),
                                    value_ranges.compare(info.normalization if info is not None else None, applied))
                  if line)
    for line in lines:
        warnings.warn(line, value_ranges.ValueRangeWarning, stacklevel=4)
    return lines


def _output_path(output: str | Path | None, overwrite: bool, resume: bool, distributed: Any,
                 reads: tuple[Path, ...]) -> Path | None:
    if output is None:
        if distributed is not None and distributed.world > 1:
            raise EngineError("a distributed run needs an output store that every rank can write")
        return None
    # under torchrun only rank 0's claim decides "in use", so that all ranks stop alike
    single = distributed is None or distributed.world <= 1
    return check_output(output, overwrite=overwrite, resume=resume, reads=reads, probe=single)


def _exchange(net: DDUNet, plan: GridPlan, communicate: bool | None) -> tuple[bool, int]:
    """Whether subdomains exchange bottlenecks, and k: the subdomain rows a communicated pixel sees."""
    config = net.config
    exchange = net.comm is not None and (config.communicate if communicate is None else bool(communicate))
    if not exchange:
        return False, 0
    halo = config.comm_layers * (config.comm_kernel // 2) * config.comm_dilation
    return True, math.ceil(halo / plan.bottleneck_tile[0])
