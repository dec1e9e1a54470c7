"""Lazy image sources: numpy, dask, zarr v3 arrays/groups, TIFF (through tifffile) and OME-Zarr.

Nothing here loads a whole image: :class:`ImageSource` reads rectangles on demand, reflects them
at the bottom/right border when a subdomain sticks out of the image (see :mod:`.grid`), keeps the
channels the model takes (an RGBA image feeds an RGB model by dropping alpha) and returns float64
(C, h, w) arrays. Normalisation happens later in the engine, with the checkpoint's global statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.grid import reflect_index
from napari_ddunet.core.io import layout, ome


class InputError(DDUNetError):
    """An input image that cannot be segmented as given; the message says why and what would work."""


TIFF_SUFFIXES = (".tif", ".tiff")


def _is_dask(array: Any) -> bool:
    return type(array).__module__.startswith("dask") and hasattr(array, "compute")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class OpenedImage:
    """An image opened lazily: every resolution level (full resolution first), as the file has them."""

    levels: list[Any]
    axes: list[str] | None          # lower-case axis names when the format records them (c, y, x, t, z)
    scale: tuple[float, ...] | None  # level 0's pixel size per axis (OME-Zarr coordinateTransformations)
    description: str

    @property
    def array(self) -> Any:
        return self.levels[0]


def _open_group(group: Any, where: str) -> OpenedImage:
    """An OME-Zarr image group (0.4 or 0.5 metadata), or a plain group's array "0" or only array."""
    entry = ome.multiscales(dict(group.attrs))
    if entry:
        levels = []
        for dataset in entry["datasets"]:
            try:
                levels.append(group[dataset["path"]])
            except KeyError:
                raise InputError(f"{where}: OME-Zarr level {len(levels)} ({dataset['path']!r}) is missing") from None
        return OpenedImage(levels, ome.axis_names(entry), ome.level_scale(entry["datasets"][0], entry), where)
    arrays = sorted(name for name, _ in group.arrays())
    if "0" in arrays:
        return OpenedImage([group["0"]], None, None, where)
    if len(arrays) == 1:
        return OpenedImage([group[arrays[0]]], None, None, where)
    raise InputError(f"{where}: a zarr group without OME-Zarr multiscales metadata and no single array to read")


def _open_tiff(path: Path) -> OpenedImage:
    """All levels of a (pyramidal) TIFF through tifffile's zarr store, with the series' axis names."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            axes = ["c" if a in "CS" else a.lower() for a in tif.series[0].axes.upper()]
        node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        levels = [node] if isinstance(node, zarr.Array) else [node[k] for k in sorted(node.array_keys(), key=int)]
    except Exception as error:
        raise InputError(f"cannot read TIFF {path}: {_first_line(error)}") from None
    return OpenedImage(levels, axes, None, str(path))


def open_levels(image: Any) -> OpenedImage:
    """Open ``image`` lazily: a path (.tif/.tiff, .zarr/.ome.zarr, .npy), a zarr group or array, numpy or dask.

    The one opener of the package: the engine, the napari reader, the trainer and the readers of the
    engine's own store all call it.
    """
    import zarr

    if isinstance(image, str | Path):
        path = Path(image)
        if not path.exists():
            raise InputError(f"input not found: {path}")
        name = path.name.lower()
        if name.endswith(TIFF_SUFFIXES):
            return _open_tiff(path)
        if path.is_dir() or name.endswith(".zarr"):
            try:
                node = zarr.open(str(path), mode="r")
            except Exception as error:
                raise InputError(f"cannot open zarr store {path}: {_first_line(error)}") from None
            if isinstance(node, zarr.Group):
                return _open_group(node, str(path))
            return OpenedImage([node], None, None, str(path))
        if name.endswith(".npy"):
            try:
                return OpenedImage([np.load(path, mmap_mode="r")], None, None, str(path))
            except Exception as error:
                raise InputError(f"cannot read {path}: {error}") from None
        raise InputError(f"unsupported input format: {path} (use .tif/.tiff, .zarr/.ome.zarr or .npy)")
    description = f"{type(image).__name__} of shape {tuple(getattr(image, 'shape', ()))}"
    if isinstance(image, zarr.Group):
        return _open_group(image, "zarr group")
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise InputError(f"cannot segment a {type(image).__name__}; give an array or a path")
    return OpenedImage([image], None, None, description)


def _squeeze(array: Any, drop: tuple[int, ...]) -> Any:
    """``array`` without the unit axes ``drop``, still lazy (through dask)."""
    if not drop:
        return array
    import dask.array as da

    if not _is_dask(array):
        chunks = getattr(array, "chunks", None)
        array = da.from_array(array, chunks=chunks if isinstance(chunks, tuple) else "auto")
    return array[tuple(0 if i in drop else slice(None) for i in range(array.ndim))]


@dataclass
class ImageSource:
    """A lazily read 2D image with channels: ``read(y0, y1, x0, x1)`` -> float64 (C, h, w)."""

    array: Any
    channel_axis: int | None
    channels: int            # channels passed to the model (alpha dropped)
    description: str

    @property
    def shape(self) -> tuple[int, int]:
        dims = [s for i, s in enumerate(self.array.shape) if i != self.channel_axis]
        return int(dims[0]), int(dims[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def _take(self, rows: slice, cols: slice) -> np.ndarray:
        if self.channel_axis is None:
            block = self.array[rows, cols]
        elif self.channel_axis == 0:
            block = self.array[: self.channels, rows, cols]
        else:
            block = self.array[rows, cols, : self.channels]
        if _is_dask(block):
            block = block.compute()
        block = np.asarray(block)
        if self.channel_axis is None:
            block = block[None]
        elif self.channel_axis == 2:
            block = np.moveaxis(block, 2, 0)
        return block.astype(np.float64, copy=False)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) as float64 (C, h, w), reflected where they leave the image."""
        height, width = self.shape
        if min(y0, x0) >= 0 and y1 <= height and x1 <= width:
            return self._take(slice(y0, y1), slice(x0, x1))
        ry = reflect_index(np.arange(y0, y1), height)
        rx = reflect_index(np.arange(x0, x1), width)
        ya, yb, xa, xb = int(ry.min()), int(ry.max()) + 1, int(rx.min()), int(rx.max()) + 1
        block = self._take(slice(ya, yb), slice(xa, xb))
        return block[:, ry - ya][:, :, rx - xa]

    def blocks(self, side: int = 1024, box: tuple[int, int, int, int] | None = None
               ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(y0, x0, (C, h, w) float64) blocks of about side x side pixels, aligned to the storage chunks,
        so that a scan of the image (or of ``box`` = (y0, y1, x0, x1) in it) holds one block at a time."""
        top, bottom, left, right = box if box is not None else (0, self.shape[0], 0, self.shape[1])
        steps = [side, side]
        chunks = getattr(self.array, "chunks", None)
        if isinstance(chunks, tuple) and chunks and all(isinstance(c, int) for c in chunks):
            spatial = [c for i, c in enumerate(chunks) if i != self.channel_axis]
            steps = [max(c, side // c * c) for c in spatial]
        for y0 in range(top // steps[0] * steps[0], bottom, steps[0]):
            for x0 in range(left // steps[1] * steps[1], right, steps[1]):
                ya, xa = max(y0, top), max(x0, left)
                yield ya, xa, self._take(slice(ya, min(bottom, y0 + steps[0])), slice(xa, min(right, x0 + steps[1])))


def _channel_axis_of(shape: tuple[int, ...], axes: list[str] | None, channel_axis: int | None,
                    in_channels: int | None) -> int | None:
    """The channel axis as an index into ``shape`` (unsqueezed): the caller's, else :mod:`.layout`'s rule."""
    if channel_axis is None:
        return layout.infer_channel_axis(shape, axes_names=axes, in_channels=in_channels)
    if not -len(shape) <= channel_axis < len(shape):
        raise InputError(f"channel_axis={channel_axis} is not an axis of an image of shape {shape}")
    return channel_axis % len(shape)


def image_layout(opened: OpenedImage, *, channel_axis: int | None = None,
                 in_channels: int | None = None) -> tuple[Any, int | None]:
    """Level 0 of ``opened`` without the unit axes :mod:`.layout` drops, and its channel axis in that
    (2D or 3D) array: ``channel_axis`` (an axis of the image as given) or the inferred one, or None."""
    array = opened.array
    full = tuple(int(s) for s in array.shape)
    axes = opened.axes if opened.axes is not None and len(opened.axes) == len(full) else None
    axis = _channel_axis_of(full, axes, channel_axis, in_channels) if full else None
    kept = layout.kept_axes(full, axes_names=axes, keep=axis) if full else ()
    array = _squeeze(array, tuple(i for i in range(len(full)) if i not in kept))
    shape = tuple(full[i] for i in kept)
    if len(shape) not in (2, 3):
        raise InputError(
            f"unsupported dimensionality: image of shape {shape} ({len(shape)}D); expected a 2D image "
            "as YX, YXC or CYX"
        )
    if len(shape) == 2:
        if channel_axis is not None:
            raise InputError(f"channel_axis={channel_axis} given for a 2D (YX) image of shape {shape}")
        return array, None
    if axis is None:
        raise InputError(
            f"cannot tell the channel axis of a {shape} image (no axis of at most {layout.MAX_CHANNELS} "
            "channels); pass channel_axis=0 (CYX) or -1 (YXC)"
        )
    if kept.index(axis) == 1:
        raise InputError(f"channel_axis must be the first (CYX) or last (YXC) image axis, got {channel_axis}")
    return array, kept.index(axis)


def open_image(image: Any, *, in_channels: int | None = None, channel_axis: int | None = None) -> ImageSource:
    """Wrap ``image`` (array or path) as an :class:`ImageSource` that feeds ``in_channels`` channels.

    2D images are YX (one channel); 3D images are YXC or CYX, guessed from file metadata (TIFF, OME-Zarr)
    or by :func:`.layout.infer_channel_axis`, or fixed by ``channel_axis`` (an axis of ``image`` as
    given, unit axes included). Unit axes are dropped by :func:`.layout.dropped_axes`. An RGBA image
    feeds an RGB model without its alpha channel; any other channel mismatch is an :class:`InputError`.
    """
    opened = open_levels(image)
    array, axis = image_layout(opened, channel_axis=channel_axis, in_channels=in_channels)
    shape = tuple(int(s) for s in array.shape)
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise InputError(f"unsupported pixel type {dtype}; use integer or floating-point pixels")
    have = 1 if axis is None else shape[axis]
    use = have
    if in_channels is not None and have != in_channels:
        if have == 4 and in_channels == 3:
            use = 3
        else:
            name = "YX" if axis is None else ("CYX" if axis == 0 else "YXC")
            raise InputError(
                f"image has {have} channel{'s' if have != 1 else ''} ({name}, shape {shape}) but the "
                f"checkpoint expects {in_channels}"
            )
    source = ImageSource(array, axis, use, opened.description)
    height, width = source.shape
    if height == 0 or width == 0:
        raise InputError(f"image is empty (shape {shape})")
    return source


def check_finite(source: ImageSource, box: tuple[int, int, int, int] | None = None) -> None:
    """Raise :class:`InputError` naming how many pixels are NaN/inf and where the first one is.

    Integer images cannot hold them and are not scanned; float images are scanned block by block,
    so the check costs one read of the pixels a run will use (``box`` = (y0, y1, x0, x1), default the
    whole image) but never holds more than one block.
    """
    if not np.issubdtype(source.dtype, np.floating):
        return
    count = 0
    first: tuple[int, int, int] | None = None
    for y0, x0, block in source.blocks(box=box):
        bad = ~np.isfinite(block)
        n = int(bad.sum())
        if n:
            y, x = np.unravel_index(int(np.argmax(bad.any(axis=0))), bad.shape[1:])
            here = (int(y0 + y), int(x0 + x), int(np.argmax(bad[:, y, x])))
            first = here if first is None else min(first, here)
            count += n
    if count:
        y, x, c = first
        raise InputError(
            f"image has {count} NaN/inf value{'s' if count != 1 else ''}; first at (y={y}, x={x}, channel {c}); "
            "replace or mask them before segmenting"
        )
