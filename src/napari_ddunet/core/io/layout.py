"""The one rule for an image's layout: which axes are dropped, which holds channels, which are y and x.

Every caller (the engine's :func:`~napari_ddunet.core.io.images.open_image`, the widget, the reader and
the trainer) passes the shape as it has it, unit axes included, and gets axis indices into that same
shape, so a napari layer of shape (1, H, W, 3) and the engine agree on what its channel axis is.

The rule, in order:

1. Unit axes are dropped: those named other than c, y, x (OME-Zarr's t and z) or, without names,
   leading ones while more than three axes remain. An axis the caller chose as channel axis stays.
2. The channel axis is the one named ``c``; else the last axis of an RGB(A) layer; else, when three
   axes remain, the last or the first (in that order) that can hold bands: never one named ``z`` or
   ``t`` (planes, not bands); the one that leaves the other two axes of ``yx_shape`` (a training
   mask's shape), whatever its length; else one of the model's ``in_channels`` entries or of at most
   :data:`MAX_CHANNELS` (13-band Sentinel-2 and 11-band Landsat scenes included).
3. The y and x axes are the last two remaining axes that are not the channel axis.

Which bands of the channel axis feed the model is the caller's choice (``channels``), never this
rule's: see :func:`band_mismatch`.
"""

from __future__ import annotations

from collections.abc import Sequence

#: An axis longer than this is taken for channels only when the model or a mask says so.
MAX_CHANNELS = 16
#: Axis names that are never dropped, even when they have one entry.
KEPT_NAMES = ("c", "y", "x")
#: Axis names that hold planes of a stack, never bands.
PLANE_NAMES = ("z", "t")


def dropped_axes(shape: Sequence[int], *, axes_names: Sequence[str] | None = None,
                 keep: int | None = None) -> tuple[int, ...]:
    """Unit axes that carry no image information (rule 1); ``keep`` is never dropped."""
    shape = tuple(int(s) for s in shape)
    keep = None if keep is None else keep % len(shape)
    if axes_names is not None and len(axes_names) == len(shape):
        return tuple(i for i, (name, size) in enumerate(zip(axes_names, shape, strict=True))
                     if size == 1 and name not in KEPT_NAMES and i != keep)
    drop: list[int] = []
    for i, size in enumerate(shape):
        if len(shape) - len(drop) <= 3 or size != 1 or i == keep:
            break
        drop.append(i)
    return tuple(drop)


def kept_axes(shape: Sequence[int], *, axes_names: Sequence[str] | None = None,
              keep: int | None = None) -> tuple[int, ...]:
    """The axes left after :func:`dropped_axes`, in order."""
    drop = dropped_axes(shape, axes_names=axes_names, keep=keep)
    return tuple(i for i in range(len(shape)) if i not in drop)


def infer_channel_axis(shape: Sequence[int], *, axes_names: Sequence[str] | None = None, rgb: bool = False,
                       in_channels: int | None = None, yx_shape: Sequence[int] | None = None) -> int | None:
    """The channel axis of an image of ``shape`` (an index into ``shape``) by rule 2, or None when the
    image has no channel axis (2D) or none can be told (the engine then asks for one)."""
    shape = tuple(int(s) for s in shape)
    named = axes_names is not None and len(axes_names) == len(shape)
    if named and "c" in axes_names:
        return list(axes_names).index("c")
    if rgb and shape:
        return len(shape) - 1
    kept = kept_axes(shape, axes_names=axes_names)
    if len(kept) != 3:
        return None
    candidates = [axis for axis in (kept[-1], kept[0]) if not (named and axes_names[axis] in PLANE_NAMES)]
    if yx_shape is not None:
        spatial = tuple(int(s) for s in yx_shape)
        fits = [axis for axis in candidates if tuple(shape[i] for i in kept if i != axis) == spatial]
        if len(fits) == 1:
            return fits[0]
    exact = [axis for axis in candidates if in_channels is not None and shape[axis] == in_channels]
    if exact:
        return exact[0]
    short = [axis for axis in candidates if shape[axis] <= MAX_CHANNELS]
    return short[0] if short else None


def trained_bands(trained: Sequence[int] | None, have: int, expected: int | None) -> list[int] | None:
    """``trained`` (a checkpoint's training bands) when an image of ``have`` bands has them all and they
    are as many as the model takes (``expected``), else None."""
    if trained is None or expected is None or len(trained) != expected:
        return None
    bands = [int(b) for b in trained]
    return bands if all(0 <= b < have for b in bands) else None


def band_mismatch(have: int, expected: int, where: str = "", trained: Sequence[int] | None = None) -> str:
    """The one line for an image whose band count is not the model's: both counts and how to choose.

    ``where`` says which axis was taken for bands (so a wrong guess shows). The example is ``trained``
    (the bands the model was trained on, when this image has them), else the first bands, repeated
    when the image has fewer than the model takes (a grey image into an RGB model)."""
    usable = trained_bands(trained, have, expected)
    example = " ".join(map(str, usable if usable else (i % have for i in range(expected))))
    why = " (the bands the model was trained on)" if usable else ""
    plural = "s" if have != 1 else ""
    where = f" ({where})" if where else ""
    return (f"image has {have} band{plural}{where}, the model expects {expected}; choose bands with --channels "
            f"(channels= in Python, Bands in the widget), e.g. --channels {example}{why}")


def yx_axes(ndim: int, channel_axis: int | None) -> tuple[int, int]:
    """The y and x axes (rule 3): the last two axes that are not the channel axis."""
    channel = None if channel_axis is None else channel_axis % ndim
    spatial = [axis for axis in range(ndim) if axis != channel]
    return spatial[-2], spatial[-1]


def plane_axes(shape: Sequence[int], axes_names: Sequence[str] | None) -> tuple[int, ...]:
    """The axes of a stack: named ``t`` or ``z`` (:data:`PLANE_NAMES`) with more than one entry, each
    entry a 2D plane for the model; unit ones are dropped by rule 1, so such an image stays 2D."""
    if axes_names is None or len(axes_names) != len(shape):
        return ()
    return tuple(i for i, (name, size) in enumerate(zip(axes_names, shape, strict=True))
                 if name in PLANE_NAMES and int(size) > 1)
