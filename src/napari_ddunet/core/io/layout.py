"""The one rule for an image's layout: which axes are dropped, which holds channels, which are y and x.

Every caller (the engine's :func:`~napari_ddunet.core.io.images.open_image`, the widget, the reader and
the trainer) passes the shape as it has it, unit axes included, and gets axis indices into that same
shape, so a napari layer of shape (1, H, W, 3) and the engine agree on what its channel axis is.

The rule, in order:

1. Unit axes are dropped: those named other than c, y, x (OME-Zarr's t and z) or, without names,
   leading ones while more than three axes remain. An axis the caller chose as channel axis stays.
2. The channel axis is the one named ``c``; else the last axis of an RGB(A) layer; else, when three
   axes remain, the last or the first (in that order) if it has at most :data:`MAX_CHANNELS` entries,
   preferring one that matches the model's ``in_channels`` (or an RGBA axis for an RGB model).
3. The y and x axes are the last two remaining axes that are not the channel axis.
"""

from __future__ import annotations

from collections.abc import Sequence

#: An unnamed axis longer than this is never taken for channels.
MAX_CHANNELS = 4
#: Axis names that are never dropped, even when they have one entry.
KEPT_NAMES = ("c", "y", "x")


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
                       in_channels: int | None = None) -> int | None:
    """The channel axis of an image of ``shape`` (an index into ``shape``) by rule 2, or None when the
    image has no channel axis (2D) or none can be told (the engine then asks for one)."""
    shape = tuple(int(s) for s in shape)
    if axes_names is not None and len(axes_names) == len(shape) and "c" in axes_names:
        return list(axes_names).index("c")
    if rgb and shape:
        return len(shape) - 1
    kept = kept_axes(shape, axes_names=axes_names)
    if len(kept) != 3:
        return None
    candidates = [axis for axis in (kept[-1], kept[0]) if shape[axis] <= MAX_CHANNELS]
    if in_channels is not None:
        exact = [axis for axis in candidates if shape[axis] == in_channels]
        if exact:
            return exact[0]
        if in_channels == 3:
            rgba = [axis for axis in candidates if shape[axis] == 4]
            if rgba:
                return rgba[0]
    return candidates[0] if candidates else None


def yx_axes(ndim: int, channel_axis: int | None) -> tuple[int, int]:
    """The y and x axes (rule 3): the last two axes that are not the channel axis."""
    channel = None if channel_axis is None else channel_axis % ndim
    spatial = [axis for axis in range(ndim) if axis != channel]
    return spatial[-2], spatial[-1]
