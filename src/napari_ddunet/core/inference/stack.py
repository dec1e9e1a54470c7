"""Stacks: a 2D model on Z, T, TZ and TCZYX images, plane by plane.

A stack is an image with axes named ``t`` or ``z`` that hold more than one plane (named by the file:
OME-Zarr axes, OME-TIFF and ImageJ axes; or by ``axes="TCZYX"`` for an array; see
:func:`~napari_ddunet.core.io.layout.plane_axes`). Each plane is a 2D image (YX, CYX or YXC) that the
2D engine segments exactly as it segments any 2D image: the engine's ``StackRun`` runs one
:class:`~napari_ddunet.core.inference.scheduler.Scheduler` per plane, on a :class:`PlaneView` of the
input and a :func:`plane_sink` of one output store whose arrays carry the stack's leading axes in front,
chunked one plane by one subdomain. So a plane's result is the 2D engine's (bit for bit), a 2D image
keeps the store layout it always had, resume works plane by plane (each plane's progress record is its
slice of the stack's), memory is what one plane needs (one plane is in flight at a time), and progress
is one count of subdomains over all planes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_ddunet.core.inference.sink import Sink
from napari_ddunet.core.io import layout, ome
from napari_ddunet.core.io.images import InputError, OpenedImage, open_levels

#: The letters ``axes=`` takes: one per axis of the array, each at most once, Y and X required.
AXIS_LETTERS = "tczyx"


class PlaneView:
    """An array with some axes fixed at one index each: one plane of a stack, read and written lazily.

    Indexing it indexes the base array with the fixed indices put back in place, so a zarr plane is
    never read whole and a write lands in the base (the store's plane chunks).
    """

    def __init__(self, base: Any, fixed: dict[int, int]) -> None:
        self.base = base
        self.fixed = dict(fixed)
        self.base_ndim = len(base.shape)
        self.shape = tuple(int(s) for i, s in enumerate(base.shape) if i not in self.fixed)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)
        chunks = getattr(base, "chunks", None)
        regular = (isinstance(chunks, tuple) and len(chunks) == self.base_ndim
                   and all(isinstance(c, int) for c in chunks))
        self.chunks = tuple(c for i, c in enumerate(chunks) if i not in self.fixed) if regular else None

    def _key(self, key: Any) -> tuple:
        key = key if isinstance(key, tuple) else (key,)
        ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
        if ellipsis:
            i = ellipsis[0]
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        rest = iter(key + (slice(None),) * (self.ndim - len(key)))
        return tuple(self.fixed[axis] if axis in self.fixed else next(rest) for axis in range(self.base_ndim))

    def __getitem__(self, key: Any) -> Any:
        return self.base[self._key(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.base[self._key(key)] = value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = np.asarray(self[...])
        return data if dtype is None else data.astype(dtype)


def parse_axes(axes: str, shape: Sequence[int]) -> list[str]:
    """Lower-case axis names from ``axes="TCZYX"`` for an array of ``shape``; one clear line when they
    cannot describe it."""
    names = list(str(axes).strip().lower())
    valid = (len(names) == len(shape) and len(set(names)) == len(names) and set(names) <= set(AXIS_LETTERS)
             and "y" in names and "x" in names and names.index("y") < names.index("x"))
    if not valid:
        raise InputError(
            f"axes={axes!r} does not describe an image of shape {tuple(shape)}: give one letter per axis from "
            "T, C, Z, Y, X, each once, Y before X (e.g. 'ZYX', 'TZYX', 'TCZYX')"
        )
    return names


@dataclass(frozen=True)
class Stack:
    """An image whose t/z axes hold planes: ``opened`` with its axis names, ``positions`` its leading
    (plane) axes in the image as given."""

    opened: OpenedImage
    positions: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.opened.axes[i] for i in self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(self.opened.array.shape[i]) for i in self.positions)

    def leading_calibration(self, calibration: Any = None) -> list[tuple[str, float, float, str | None]]:
        """(name, spacing, origin, unit) of each leading axis: from ``calibration`` (the run's, e.g. a napari
        layer's) where it names them, else the file's (OME-Zarr coordinate transformations, OME-TIFF, ImageJ)
        or its scale; 1 px at 0 otherwise."""
        if calibration is None or not set(self.names) <= set(calibration.axes):
            calibration = getattr(self.opened, "calibration", None)
        if calibration is not None and set(self.names) <= set(calibration.axes):
            lead = calibration.select(self.names)
            return list(zip(self.names, lead.scale, lead.translate, lead.units, strict=True))
        scale = self.opened.scale
        if scale is None or len(scale) != self.opened.array.ndim:
            scale = (1.0,) * self.opened.array.ndim
        return [(name, float(scale[i]), 0.0, None) for name, i in zip(self.names, self.positions, strict=True)]

    def indices(self) -> list[tuple[int, ...]]:
        """Every plane, in storage order (the last leading axis fastest)."""
        return [tuple(int(i) for i in index) for index in np.ndindex(*self.shape)]

    def label(self, index: Sequence[int]) -> str:
        """"t=1, z=3": a plane as people name it."""
        return ", ".join(f"{name}={i}" for name, i in zip(self.names, index, strict=True))

    def channel_axis(self, channel_axis: int | None) -> int | None:
        """The caller's channel axis (an axis of the stack as given) as an axis of one plane."""
        if channel_axis is None:
            return None
        ndim = self.opened.array.ndim
        if not -ndim <= channel_axis < ndim:
            raise InputError(f"channel_axis={channel_axis} is not an axis of an image of shape "
                             f"{tuple(self.opened.array.shape)}")
        axis = channel_axis % ndim
        if axis in self.positions:
            raise InputError(f"channel_axis={channel_axis} is the stack's {self.opened.axes[axis]} axis, whose "
                             "entries are planes; name another axis or pass axes=")
        return axis - sum(p < axis for p in self.positions)

    def plane(self, index: Sequence[int]) -> OpenedImage:
        """One plane as an opened 2D image (lazy), for :func:`~napari_ddunet.core.io.images.open_image`.

        Levels whose leading axes are downsampled (a 3D pyramid) have no such plane and are left out.
        """
        fixed = dict(zip(self.positions, (int(i) for i in index), strict=True))
        lead = self.shape
        levels = [PlaneView(level, fixed) for level in self.opened.levels
                  if tuple(int(level.shape[i]) for i in self.positions) == lead]
        keep = [i for i in range(self.opened.array.ndim) if i not in fixed]
        scale = self.opened.scale
        # the calibration names its axes, so it stays whole; the positional scale loses the leading axes
        return dataclasses.replace(
            self.opened, levels=levels, axes=[self.opened.axes[i] for i in keep],
            scale=None if scale is None or len(scale) != self.opened.array.ndim else tuple(scale[i] for i in keep),
            description=f"{self.opened.description} ({self.label(index)})",
        )


def open_stack(image: Any, axes: str | None = None) -> tuple[OpenedImage, Stack | None]:
    """Open ``image`` with its axis names (the file's, or ``axes``); the stack it is, or None for a 2D image.

    The opened image goes on to :func:`~napari_ddunet.core.io.images.open_image` (one plane of it for a
    stack), so nothing is opened twice.
    """
    opened = open_levels(image)
    shape = tuple(int(s) for s in opened.array.shape)
    if axes is not None:
        opened = dataclasses.replace(opened, axes=parse_axes(axes, shape))
    positions = layout.plane_axes(shape, opened.axes)
    return opened, (Stack(opened, positions) if positions else None)


def plane_indices(stack: Stack, planes: Sequence[int | Sequence[int]] | None) -> tuple[tuple[int, ...], ...]:
    """The planes a run computes: all, or the caller's (an int per plane of a Z or T stack, a tuple each
    for TZ), checked against the stack's shape."""
    if planes is None:
        return tuple(stack.indices())
    chosen = []
    for plane in planes:
        index = (plane,) if isinstance(plane, int | np.integer) else tuple(plane)
        inside = len(index) == len(stack.shape) and all(
            isinstance(i, int | np.integer) and 0 <= i < n for i, n in zip(index, stack.shape, strict=False))
        if not inside:
            shown = ",".join(str(i) for i in index)
            raise InputError(f"plane {shown} is not in the stack: its {''.join(stack.names).upper()} axes have "
                             f"{' x '.join(map(str, stack.shape))} planes")
        chosen.append(tuple(int(i) for i in index))
    if not chosen:
        raise InputError("planes=[] chooses no plane; leave it out to segment every plane")
    return tuple(dict.fromkeys(chosen))


def plane_sink(sink: Sink, index: Sequence[int]) -> Sink:
    """The stack's sink seen as one plane's: every array a :class:`PlaneView`, the rest shared."""
    view = copy.copy(sink)
    fixed = dict(enumerate(int(i) for i in index))
    view.arrays = {name: PlaneView(array, fixed) for name, array in sink.arrays.items()}
    view.leading = ()
    return view


def name_leading_axes(sink: Sink, stack: Stack, calibration: Any = None) -> None:
    """Give the store's OME-Zarr multiscales (the root, ``labels`` and its label image, where they have
    one) the stack's leading axes: names, types ("time"/"space"), spacing, origin and units from the image."""
    if sink.path is None:
        return
    leading = stack.leading_calibration(calibration)
    names = ["labels", getattr(sink, "label_image", None)]
    for group in [sink.root, *(sink.root[name] for name in names if name is not None and name in sink.root)]:
        attrs = dict(group.attrs)
        if ome.multiscales(attrs):
            updated = ome.with_leading_axes(attrs, leading)
            for key in ("ome", "multiscales"):
                if key in updated and updated[key] != attrs.get(key):
                    group.attrs[key] = updated[key]


def layer_axes(shape: Sequence[int], channel_axis: int | None, labels: Sequence[str] | None = None) -> str | None:
    """``axes=`` for an array shown as a napari layer of ``shape``: its last two non-channel axes Y and X,
    the channel axis C, the others planes: named by the layer's axis labels where those say t or z,
    else Z (the one before it T). None for a 2D layer (no axis with more than one plane).

    A viewer shows every leading axis as a slider, so the widget segments them as planes; at most two
    (T and Z) fit an OME-Zarr image.
    """
    ndim = len(shape)
    channel = None if channel_axis is None else channel_axis % ndim
    ya, xa = layout.yx_axes(ndim, channel)
    leading = [i for i in range(ndim) if i not in (channel, ya, xa)]
    if not any(int(shape[i]) > 1 for i in leading):
        return None
    if len(leading) > 2:
        raise InputError(f"a layer of shape {tuple(shape)} has {len(leading)} axes besides y, x and channels; "
                         "a stack has at most two (T and Z)")
    given = [str(labels[i]).lower() if labels is not None and len(labels) == ndim else "" for i in leading]
    names = given if sorted(given) in (["z"], ["t"], ["t", "z"]) else ["t", "z"][2 - len(leading):]
    letters = {channel: "c", ya: "y", xa: "x", **dict(zip(leading, names, strict=True))}
    return "".join(letters[i] for i in range(ndim)).upper()
