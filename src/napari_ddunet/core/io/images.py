"""Lazy image sources: numpy, dask, zarr v3 arrays/groups, TIFF (through tifffile) and OME-Zarr.

Nothing here loads a whole image: :class:`ImageSource` reads rectangles on demand, reflects them
at the bottom/right border when a subdomain sticks out of the image (see :mod:`.grid`), reads only
the bands the model takes (the caller's ``channels``, in their order; alpha is left out only where the
file says a band is alpha) and returns float64 (C, h, w) arrays. Normalisation happens later in the
engine, with the checkpoint's global statistics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.grid import reflect_index
from napari_ddunet.core.io import layout, ome


class InputError(DDUNetError):
    """An input image that cannot be segmented as given; the message says why and what would work."""


class ChannelAxisError(InputError):
    """A 3D image whose band axis cannot be told; front ends without ``--channel-axis`` say what they need."""

    def __init__(self, message: str, shape: tuple[int, ...]) -> None:
        super().__init__(message)
        self.shape = shape


class InputReadError(InputError):
    """Pixels of the input that cannot be read (a truncated chunk, a failing codec): bad input before the
    run's store exists, an I/O fault (:class:`~napari_ddunet.core.errors.RunIOError`, exit 3) once it does."""


TIFF_SUFFIXES = (".tif", ".tiff")
#: Band names a mismatch line lists at most (a hyperspectral cube has hundreds).
MAX_NAMED = 16
#: Formats that are decoded whole (no tiles): fine for photos and microscope snapshots.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
    alpha: bool = False              # the file marks the last band as alpha (TIFF ExtraSamples, PNG RGBA/LA)
    calibration: ome.Calibration | None = None  # pixel size, origin and unit per axis, where the file says
    band_names: tuple[str, ...] | None = None   # one per band where the file names them (GDAL, OME)

    @property
    def array(self) -> Any:
        return self.levels[0]


def _open_group(group: Any, where: str) -> OpenedImage:
    """An OME-Zarr image group (0.4 or 0.5 metadata), or a plain group's array "0" or only array.

    Metadata that does not follow the OME-Zarr schema (a datasets entry that is no list, a scale of
    strings, ...) is one line naming the store, not a traceback from deep in the parsing."""
    try:
        return _open_group_unchecked(group, where)
    except DDUNetError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        raise InputError(f"{where}: malformed OME-Zarr metadata ({type(error).__name__}: {error})") from None


def _open_group_unchecked(group: Any, where: str) -> OpenedImage:
    entry = ome.multiscales(dict(group.attrs))
    if entry:
        levels = []
        for dataset in entry["datasets"]:
            try:
                levels.append(group[dataset["path"]])
            except KeyError:
                raise InputError(f"{where}: OME-Zarr level {len(levels)} ({dataset['path']!r}) is missing") from None
        labels = ome.channel_labels(dict(group.attrs))
        return OpenedImage(levels, ome.axis_names(entry), ome.level_scale(entry["datasets"][0], entry), where,
                           calibration=ome.calibration(entry), band_names=None if labels is None else tuple(labels))
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
            alpha = _tiff_alpha(tif.series[0].pages[0])
            calibration = ome.tiff_calibration(tif, axes)
            names = _tiff_band_names(tif)
        node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        levels = [node] if isinstance(node, zarr.Array) else [node[k] for k in sorted(node.array_keys(), key=int)]
    except Exception as error:
        raise InputError(f"cannot read TIFF {path}: {_first_line(error)}") from None
    return OpenedImage(levels, axes, None, str(path), alpha, calibration, names)


def _tiff_band_names(tif: Any) -> tuple[str, ...] | None:
    """Band names an OME-TIFF (Channel Name) or a GDAL GeoTIFF (DESCRIPTION items per sample) records."""
    from xml.etree import ElementTree

    if tif.is_ome and tif.ome_metadata:
        names = ome.ome_xml_channel_names(tif.ome_metadata)
        return None if names is None else tuple(names)
    tag = tif.pages[0].tags.get(42112)   # GDAL_METADATA
    if tag is None:
        return None
    try:
        root = ElementTree.fromstring(str(tag.value))
    except ElementTree.ParseError:
        return None
    found = {int(item.get("sample")): item.text or "" for item in root.iter("Item")
             if item.get("name") == "DESCRIPTION" and str(item.get("sample", "")).isdigit()}
    if not found:
        return None
    return tuple(found.get(i, "") for i in range(max(found) + 1))


def _open_picture(path: Path) -> OpenedImage:
    """A PNG or JPEG, decoded whole by Pillow (neither format can be read by parts): YX, or YXC with the
    alpha band the file declares (RGBA, LA); a palette image becomes the RGB(A) it shows."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            if picture.mode in ("P", "PA"):
                picture = picture.convert("RGBA" if "transparency" in picture.info or picture.mode == "PA" else "RGB")
            mode = picture.mode
            array = np.asarray(picture)
    except Image.DecompressionBombError:
        raise InputError(f"{path} is too large to decode as a whole ({path.suffix}); convert it to a tiled TIFF "
                         "or zarr, which are read by parts") from None
    except Exception as error:
        raise InputError(f"cannot read {path}: {_first_line(error)}") from None
    axes = ["y", "x"] if array.ndim == 2 else ["y", "x", "c"]
    return OpenedImage([array], axes, None, str(path), mode in ("RGBA", "LA"))


def _tiff_alpha(page: Any) -> bool:
    """Whether the page's last sample is alpha: ExtraSamples 1 (associated) or 2 (unassociated)."""
    extra = tuple(int(value) for value in (getattr(page, "extrasamples", None) or ()))
    return bool(extra) and extra[-1] in (1, 2)


def open_levels(image: Any) -> OpenedImage:
    """Open ``image`` lazily: a path (.tif/.tiff, .zarr/.ome.zarr, .npy), a zarr group or array, numpy or dask.

    The one opener of the package: the engine, the napari reader, the trainer and the readers of the
    engine's own store all call it. An :class:`OpenedImage` (one plane of a stack, or an image whose
    axes the caller named) is returned as it is.
    """
    import zarr

    if isinstance(image, OpenedImage):
        return image
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
        if name.endswith(PICTURE_SUFFIXES):
            return _open_picture(path)
        raise InputError(f"unsupported input format: {path} (use .tif/.tiff, .zarr/.ome.zarr, .png, .jpg or .npy)")
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
    channels: int            # channels passed to the model
    description: str
    bands: tuple[int, ...] | None = None  # the bands read, in this order; None: every band as stored
    note: str = ""                        # how the bands were chosen, for the run's first message
    calibration: ome.Calibration | None = None  # y and x pixel size, origin and unit, where the input says

    @property
    def shape(self) -> tuple[int, int]:
        dims = [s for i, s in enumerate(self.array.shape) if i != self.channel_axis]
        return int(dims[0]), int(dims[1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def _get(self, bands: slice, rows: slice, cols: slice) -> np.ndarray:
        """The stored bands ``bands`` of a rectangle as (C, h, w), read from the array as stored."""
        try:
            if self.channel_axis is None:
                block = self.array[rows, cols]
            elif self.channel_axis == 0:
                block = self.array[bands, rows, cols]
            else:
                block = self.array[rows, cols, bands]
            if _is_dask(block):
                block = block.compute()
            block = np.asarray(block)
        except Exception as error:   # a truncated or missing chunk, a codec that fails, a file gone
            raise InputReadError(f"cannot read {self.description} at y={rows.start}..{rows.stop}, "
                                 f"x={cols.start}..{cols.stop}: {_first_line(error)}") from error
        if self.channel_axis is None:
            return block[None]
        return np.moveaxis(block, 2, 0) if self.channel_axis == 2 else block

    def _take(self, rows: slice, cols: slice) -> np.ndarray:
        """The chosen bands of a rectangle, read band-selective: an evenly spaced set in one strided
        read, else each band alone (CYX) or the span between the first and last (YXC, whose chunks
        hold every band anyway); never every band of a CYX image for three of them."""
        if self.bands is None or self.channel_axis is None:
            block = self._get(slice(None), rows, cols)
            if self.bands is not None:
                block = block[list(self.bands)]
            return block.astype(np.float64, copy=False)
        wanted = sorted(set(self.bands))
        step = wanted[1] - wanted[0] if len(wanted) > 1 else 1
        if wanted == list(range(wanted[0], wanted[-1] + 1, step)):
            block = self._get(slice(wanted[0], wanted[-1] + 1, step), rows, cols)
            where = {band: i for i, band in enumerate(wanted)}
        elif self.channel_axis == 0:
            block = np.concatenate([self._get(slice(band, band + 1), rows, cols) for band in wanted])
            where = {band: i for i, band in enumerate(wanted)}
        else:
            block = self._get(slice(wanted[0], wanted[-1] + 1), rows, cols)
            where = {band: band - wanted[0] for band in wanted}
        order = [where[band] for band in self.bands]
        if order != list(range(len(block))):
            block = block[order]
        return block.astype(np.float64, copy=False)

    def window(self, rows: slice, cols: slice) -> np.ndarray:
        """The chosen bands of ``array[rows, cols]`` (strides allowed, no reflection) as float64 (C, h, w)."""
        return self._take(rows, cols)

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
                    in_channels: int | None, yx_shape: Sequence[int] | None = None) -> int | None:
    """The channel axis as an index into ``shape`` (unsqueezed): the caller's, else :mod:`.layout`'s rule."""
    if channel_axis is None:
        return layout.infer_channel_axis(shape, axes_names=axes, in_channels=in_channels, yx_shape=yx_shape)
    if not -len(shape) <= channel_axis < len(shape):
        raise InputError(f"channel_axis={channel_axis} is not an axis of an image of shape {shape}")
    return channel_axis % len(shape)


def image_layout(opened: OpenedImage, *, channel_axis: int | None = None, in_channels: int | None = None,
                 yx_shape: Sequence[int] | None = None) -> tuple[Any, int | None]:
    """Level 0 of ``opened`` without the unit axes :mod:`.layout` drops, and its channel axis in that
    (2D or 3D) array: ``channel_axis`` (an axis of the image as given) or the inferred one, or None.
    ``yx_shape`` (a training mask's shape) tells the channel axis of an image with many bands."""
    array = opened.array
    full = tuple(int(s) for s in array.shape)
    axes = opened.axes if opened.axes is not None and len(opened.axes) == len(full) else None
    axis = _channel_axis_of(full, axes, channel_axis, in_channels, yx_shape) if full else None
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
        raise ChannelAxisError(
            f"cannot tell the channel axis of a {shape} image (neither its first nor its last axis has at "
            f"most {layout.MAX_CHANNELS} entries); name it: --channel-axis 0 (CYX) or -1 (YXC), channel_axis= "
            "in Python", shape
        )
    if kept.index(axis) == 1:
        raise InputError(f"channel_axis must be the first (CYX) or last (YXC) image axis, got {channel_axis}")
    return array, kept.index(axis)


def open_image(image: Any, *, in_channels: int | None = None, channel_axis: int | None = None,
               channels: Sequence[int] | None = None, yx_shape: Sequence[int] | None = None,
               trained: Sequence[int] | None = None) -> ImageSource:
    """Wrap ``image`` (array or path) as an :class:`ImageSource` that feeds ``in_channels`` channels.

    2D images are YX (one band); 3D images are YXC or CYX, guessed from file metadata (TIFF, OME-Zarr)
    or by :func:`.layout.infer_channel_axis`, or fixed by ``channel_axis`` (an axis of ``image`` as
    given, unit axes included). Unit axes are dropped by :func:`.layout.dropped_axes`. ``channels``
    picks bands of the channel axis by index, in that order (repeats allowed: ``(0, 0, 0)`` feeds a
    grey image to an RGB model); without it every band feeds the model, except a band the file marks
    as alpha when the model takes one band fewer. Any other band-count mismatch is an :class:`InputError`.
    ``image`` may also be an :class:`OpenedImage`; ``yx_shape`` is passed to :func:`image_layout`;
    ``trained`` (the bands the model was trained on) is the example a mismatch line offers.
    """
    opened = open_levels(image)
    hint = in_channels if channels is None else None  # a selection says nothing of the image's band count
    array, axis = image_layout(opened, channel_axis=channel_axis, in_channels=hint, yx_shape=yx_shape)
    shape = tuple(int(s) for s in array.shape)
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise InputError(f"unsupported pixel type {dtype}; use integer or floating-point pixels")
    have = 1 if axis is None else shape[axis]
    where = "YX" if axis is None else f"{'CYX' if axis == 0 else 'YXC'}, shape {shape}"
    names = opened.band_names if opened.band_names is not None and len(opened.band_names) == have else None
    bands, note = choose_bands(have, in_channels, channels, alpha=opened.alpha and axis is not None, where=where,
                               names=names, trained=trained)
    calibration = None if opened.calibration is None else opened.calibration.select(("y", "x"))
    source = ImageSource(array, axis, have if bands is None else len(bands), opened.description, bands, note,
                         calibration)
    height, width = source.shape
    if height == 0 or width == 0:
        raise InputError(f"image is empty (shape {shape})")
    return source


def choose_bands(have: int, in_channels: int | None, channels: Sequence[int] | None, *, alpha: bool = False,
                 where: str = "", names: Sequence[str] | None = None,
                 trained: Sequence[int] | None = None) -> tuple[tuple[int, ...] | None, str]:
    """The bands to read of an image with ``have`` bands (None: all, as stored) and a note saying how
    they were chosen; raises :class:`InputError` for a band that does not exist or a count the model
    does not take. The one rule for the engine, the widget and the trainer. ``names`` (the file's, one
    per band) are shown in the note and the mismatch line, so the user can tell which index is which."""
    if channels is not None:
        chosen = tuple(channels)
        if not chosen:
            raise InputError("no bands chosen; give at least one band index with --channels")
        for band in chosen:
            if isinstance(band, bool) or not isinstance(band, int | np.integer) or not 0 <= band < have:
                plural = "s" if have != 1 else ""
                raise InputError(f"band {band!r} does not exist: the image has {have} band{plural} "
                                 f"(--channels takes indices 0..{have - 1})")
        chosen = tuple(int(band) for band in chosen)
        if in_channels is not None and len(chosen) != in_channels:
            raise InputError(f"{len(chosen)} band{'s' if len(chosen) != 1 else ''} chosen "
                             f"({' '.join(map(str, chosen))}), the model expects {in_channels}")
        if chosen == tuple(range(have)):
            return None, ""
        named = f" ({', '.join(_short(names[band]) for band in chosen)})" if names else ""
        return chosen, f"bands {', '.join(map(str, chosen))} of {have}{named}"
    if in_channels is None or have == in_channels:
        return None, ""
    if alpha and have - 1 == in_channels:
        kept = "band 0" if in_channels == 1 else f"bands 0..{in_channels - 1}"
        return tuple(range(in_channels)), f"{kept} of {have} (band {have - 1} is alpha)"
    if names:
        listed = ", ".join(f"{i} {_short(name)}" for i, name in enumerate(names[:MAX_NAMED]))
        where += f"; {listed}" + (f", ... ({have - MAX_NAMED} more)" if have > MAX_NAMED else "")
    raise InputError(layout.band_mismatch(have, in_channels, where, trained))


def _short(name: str) -> str:
    """A band name from a file, on one line and at most 24 characters."""
    text = " ".join(str(name).split())
    return text if len(text) <= 24 else text[:21] + "..."


def check_readable(source: ImageSource, box: tuple[int, int, int, int] | None = None) -> None:
    """Decode the first, last and middle pixels of ``box`` (the blocks, tiles or strips that hold them),
    so that a file that cannot be decoded (a truncated TIFF, a codec that is not installed) fails here,
    in one line, before any output exists."""
    top, bottom, left, right = box if box is not None else (0, source.shape[0], 0, source.shape[1])
    for y, x in ((top, left), ((top + bottom) // 2, (left + right) // 2), (bottom - 1, right - 1)):
        try:
            source.read(y, y + 1, x, x + 1)
        except Exception as error:
            cause = error.__cause__ if isinstance(error, InputReadError) and error.__cause__ else error
            raise InputError(f"cannot decode {source.description} at (y={y}, x={x}): {_first_line(cause)}") from None


def check_finite(source: ImageSource, box: tuple[int, int, int, int] | None = None,
                 limit: float | None = None) -> None:
    """Raise :class:`InputError` naming how many pixels are NaN/inf and where the first one is; with ``limit``
    (float32's largest value for a float32 run of float64 pixels) also the pixels beyond it, which the cast
    to the compute dtype would turn into inf.

    Integer images cannot hold them and are not scanned; float images are scanned block by block,
    so the check costs one read of the pixels a run will use (``box`` = (y0, y1, x0, x1), default the
    whole image) but never holds more than one block.
    """
    if not np.issubdtype(source.dtype, np.floating):
        return
    count = beyond = 0
    first: tuple[int, int, int] | None = None
    largest = 0.0
    for y0, x0, block in source.blocks(box=box):
        bad = ~np.isfinite(block)
        n = int(bad.sum())
        if n:
            y, x = np.unravel_index(int(np.argmax(bad.any(axis=0))), bad.shape[1:])
            here = (int(y0 + y), int(x0 + x), int(np.argmax(bad[:, y, x])))
            first = here if first is None else min(first, here)
            count += n
        elif limit is not None:
            magnitude = np.abs(block)
            over = magnitude > limit
            beyond += int(over.sum())
            largest = max(largest, float(magnitude.max(initial=0.0)))
    if count:
        y, x, c = first
        raise InputError(
            f"image has {count} NaN/inf value{'s' if count != 1 else ''}; first at (y={y}, x={x}, channel {c}); "
            "replace or mask them before segmenting"
        )
    if beyond:
        raise InputError(
            f"image has {beyond} value{'s' if beyond != 1 else ''} beyond float32's range (up to {largest:.3g}); "
            "compute in float64 (--float64, dtype=torch.float64) or rescale the image"
        )
