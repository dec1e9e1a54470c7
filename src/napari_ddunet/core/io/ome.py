"""OME-Zarr (0.4 and 0.5) metadata, physical calibration, and the label pyramid.

One pyramid rule for the engine's sink and the napari writer: level l is level l-1 downsampled 2x by
the mode of each 2x2 block (ties go to the top-left pixel, i.e. nearest), and levels are added while
the long side stays at least :data:`MIN_LEVEL_SIDE` pixels (and, for the sink, while its subdomains
stay whole).

A :class:`Calibration` (pixel size, origin and unit per axis) is read here from OME-Zarr
coordinateTransformations, OME-TIFF's OME-XML and ImageJ TIFF tags, and written back as the
coordinateTransformations of every label level (level l's pixel is 2**l input pixels wide, centred
on the block it summarises), so labels lie over their image in napari and other OME-Zarr viewers.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Pyramid levels stop once the long side would fall below this many pixels.
MIN_LEVEL_SIDE = 64
#: How every label pyramid here is made, as recorded in its multiscales metadata.
LABEL_METHOD = "2x2 mode (ties: top-left, i.e. nearest)"


#: Spellings of length units in OME-XML, ImageJ and napari -> the UDUNITS-2 names OME-Zarr uses.
_UNITS = {
    "µm": "micrometer", "μm": "micrometer", "um": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometre": "micrometer", "micrometer": "micrometer",
    "nm": "nanometer", "nanometre": "nanometer", "nanometer": "nanometer",
    "mm": "millimeter", "millimetre": "millimeter", "millimeter": "millimeter",
    "cm": "centimeter", "centimetre": "centimeter", "centimeter": "centimeter",
    "m": "meter", "metre": "meter", "meter": "meter", "km": "kilometer", "kilometer": "kilometer",
    "å": "angstrom", "angstrom": "angstrom", "pm": "picometer", "in": "inch", "inch": "inch",
    "s": "second", "second": "second", "ms": "millisecond", "millisecond": "millisecond",
    "min": "minute", "minute": "minute", "h": "hour", "hour": "hour",
}
#: Units that mean "no physical unit recorded".
_NO_UNIT = {"", "pixel", "pixels", "px", "none"}


def unit_name(unit: Any) -> str | None:
    """The OME-Zarr (UDUNITS-2) name of a unit as a file or napari spells it; None for pixels or none.

    An unknown unit is kept as written (lower case): it is the user's, not ours to drop.
    """
    if unit is None:
        return None
    text = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    key = text.lower()
    if key in _NO_UNIT:
        return None
    return _UNITS.get(key, _UNITS.get(text, key))


@dataclass(frozen=True)
class Calibration:
    """Where an array lies in physical space: per named axis, pixel size, origin (pixel 0's centre), unit."""

    axes: tuple[str, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str | None, ...]

    def __post_init__(self) -> None:
        n = len(self.axes)
        if not len(self.scale) == len(self.translate) == len(self.units) == n:
            raise ValueError(f"calibration of {n} axes needs {n} scales, translations and units")
        if not all(np.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError(f"pixel sizes must be positive and finite, got {self.scale}")

    @classmethod
    def of_axes(cls, axes: Sequence[str], scale: Sequence[float] | None = None,
                translate: Sequence[float] | None = None, units: Sequence[Any] | None = None) -> Calibration:
        """A calibration from per-axis values as napari layers have them (missing: 1, 0, no unit)."""
        n = len(axes)
        return cls(tuple(str(a).lower() for a in axes),
                   tuple(float(s) for s in (scale if scale is not None else [1.0] * n)),
                   tuple(float(t) for t in (translate if translate is not None else [0.0] * n)),
                   tuple(unit_name(u) for u in (units if units is not None else [None] * n)))

    def select(self, names: Sequence[str]) -> Calibration:
        """The calibration of the axes ``names`` (in that order); an axis it lacks is 1 px, at 0, unitless."""
        index = {name: i for i, name in enumerate(self.axes)}
        pick = [index.get(name) for name in names]
        return Calibration(
            tuple(names),
            tuple(1.0 if i is None else self.scale[i] for i in pick),
            tuple(0.0 if i is None else self.translate[i] for i in pick),
            tuple(None if i is None else self.units[i] for i in pick),
        )

    @property
    def is_identity(self) -> bool:
        """Pixel units at the origin: nothing a viewer would place differently from array indices."""
        return all(s == 1.0 for s in self.scale) and not any(self.translate) and not any(self.units)

    def downsampled(self, level: int, spatial: Sequence[str] = ("y", "x")) -> Calibration:
        """The calibration of pyramid level ``level``: pixels 2**level times larger along ``spatial``,
        each centred on the block of level-0 pixels it summarises."""
        factor = 2.0 ** level
        scale, translate = [], []
        for name, s, t in zip(self.axes, self.scale, self.translate, strict=True):
            grow = factor if name in spatial else 1.0
            scale.append(s * grow)
            translate.append(t + (grow - 1.0) / 2.0 * s)
        return Calibration(self.axes, tuple(scale), tuple(translate), self.units)

    def transformations(self) -> list[dict[str, Any]]:
        """OME-Zarr coordinateTransformations: a scale, then a translation when the origin is not 0."""
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(self.scale)}]
        if any(self.translate):
            transforms.append({"type": "translation", "translation": list(self.translate)})
        return transforms

    def axes_metadata(self) -> list[dict[str, Any]]:
        """OME-Zarr axes entries with their types and units."""
        kinds = {"c": "channel", "t": "time"}
        entries = []
        for name, unit in zip(self.axes, self.units, strict=True):
            entry: dict[str, Any] = {"name": name, "type": kinds.get(name, "space")}
            if unit is not None:
                entry["unit"] = unit
            entries.append(entry)
        return entries

    def to_dict(self) -> dict[str, list[Any]]:
        return {"axes": list(self.axes), "scale": list(self.scale), "translate": list(self.translate),
                "units": list(self.units)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Calibration | None:
        if not values:
            return None
        return cls(tuple(values["axes"]), tuple(float(s) for s in values["scale"]),
                   tuple(float(t) for t in values["translate"]), tuple(values["units"]))


def yx_calibration(calibration: Calibration | None) -> Calibration:
    """The y and x part of ``calibration`` (pixels at the origin when there is none)."""
    if calibration is None:
        return Calibration(("y", "x"), (1.0, 1.0), (0.0, 0.0), (None, None))
    return calibration.select(("y", "x"))


# -- reading ----------------------------------------------------------------------------------


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """0.5 keeps its metadata under ``ome``; 0.4 at the top level."""
    return attrs.get("ome") or attrs


def multiscales(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first multiscales entry of a group's attributes, or None."""
    entries = _ome(attrs).get("multiscales")
    return dict(entries[0]) if entries else None


def channel_labels(attrs: Mapping[str, Any]) -> list[str] | None:
    """The band names an OME-Zarr image group records (``omero.channels[].label``), or None."""
    meta = _ome(attrs)
    omero = meta.get("omero") if isinstance(meta, Mapping) else None
    channels = omero.get("channels") if isinstance(omero, Mapping) else None
    if not isinstance(channels, list) or not channels:
        return None
    return [str(c.get("label", "")) if isinstance(c, Mapping) else "" for c in channels]


def _ome_xml_pixels(xml: str) -> ElementTree.Element | None:
    """OME-XML's first Pixels element (None when the text is not XML or has none)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    return next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def ome_xml_channel_names(xml: str) -> list[str] | None:
    """The Channel Name attributes of OME-XML's first Pixels element (an OME-TIFF's band names), or None."""
    pixels = _ome_xml_pixels(xml)
    if pixels is None:
        return None
    names = [c.get("Name", "") for c in pixels if c.tag.rsplit("}", 1)[-1] == "Channel"]
    return names if any(names) else None


def axis_names(entry: Mapping[str, Any]) -> list[str] | None:
    """Lower-case axis names of a multiscales entry (0.4 allows bare strings)."""
    axes = entry.get("axes")
    if not axes:
        return None
    return [str(a["name"] if isinstance(a, dict) else a).lower() for a in axes]


def level_scale(dataset: Mapping[str, Any], entry: Mapping[str, Any]) -> tuple[float, ...] | None:
    """Pixel size of one dataset: its scale transformation times the entry-wide one, or None."""
    scale: np.ndarray | None = None
    for transforms in (dataset.get("coordinateTransformations"), entry.get("coordinateTransformations")):
        for transform in transforms or []:
            if transform.get("type") == "scale" and "scale" in transform:
                factor = np.asarray(transform["scale"], dtype=float)
                scale = factor if scale is None else scale * factor
    return None if scale is None else tuple(float(s) for s in scale)


def calibration(entry: Mapping[str, Any], dataset: int = 0) -> Calibration | None:
    """The calibration of one dataset of a multiscales entry (its transformations, then the entry's),
    or None when the entry names no axes or records no transformation at all."""
    names = axis_names(entry)
    if not names:
        return None
    scale = np.ones(len(names))
    translate = np.zeros(len(names))
    found = False
    level = entry["datasets"][dataset]
    for transforms in (level.get("coordinateTransformations"), entry.get("coordinateTransformations")):
        for transform in transforms or []:
            if transform.get("type") == "scale" and "scale" in transform:
                factor = np.asarray(transform["scale"], dtype=float)
                scale, translate = scale * factor, translate * factor
                found = True
            elif transform.get("type") == "translation" and "translation" in transform:
                translate = translate + np.asarray(transform["translation"], dtype=float)
                found = True
    units = [unit_name(a.get("unit")) if isinstance(a, dict) else None for a in entry["axes"]]
    if not found and not any(units):
        return None
    return Calibration(tuple(names), tuple(float(s) for s in scale), tuple(float(t) for t in translate),
                       tuple(units))


def _ome_xml_calibration(xml: str, axes: Sequence[str]) -> Calibration | None:
    """PhysicalSizeX/Y/Z and their units from OME-XML's first Pixels element (OME's default unit is µm),
    and the first Plane's PositionX/Y as the origin."""
    pixels = _ome_xml_pixels(xml)
    if pixels is None:
        return None
    plane = next((e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Plane"), None)
    scale, translate, units = {}, {}, {}
    for name in ("x", "y", "z"):
        size = pixels.get(f"PhysicalSize{name.upper()}")
        if size is None:
            continue
        scale[name] = float(size)
        units[name] = unit_name(pixels.get(f"PhysicalSize{name.upper()}Unit", "µm"))
        position = None if plane is None else plane.get(f"Position{name.upper()}")
        if position is not None and unit_name(plane.get(f"Position{name.upper()}Unit", "reference frame")) in (
                units[name], "reference frame"):
            translate[name] = float(position)
    if not scale:
        return None
    return Calibration(tuple(axes), tuple(scale.get(a, 1.0) for a in axes), tuple(translate.get(a, 0.0) for a in axes),
                       tuple(units.get(a) for a in axes))


def _resolution(page: Any, tag: str) -> float | None:
    """Pixels per unit of a TIFF XResolution/YResolution rational, or None."""
    value = page.tags.get(tag)
    if value is None:
        return None
    number = value.value
    ratio = number[0] / number[1] if isinstance(number, tuple) and number[1] else float(number)
    return ratio if ratio > 0 else None


def _imagej_calibration(tif: Any, axes: Sequence[str]) -> Calibration | None:
    """ImageJ's calibration: 1/XResolution and 1/YResolution in its ``unit``, ``spacing`` along z."""
    meta = tif.imagej_metadata or {}
    unit = unit_name(meta.get("unit"))
    page = tif.pages[0]
    x, y = _resolution(page, "XResolution"), _resolution(page, "YResolution")
    if unit is None or x is None or y is None:  # ImageJ writes unit "pixel" (no unit) when uncalibrated
        return None
    scale = {"x": 1.0 / x, "y": 1.0 / y}
    if meta.get("spacing"):
        scale["z"] = float(meta["spacing"])
    origin = {axis: 0.0 - float(meta.get(f"{axis}origin", 0.0)) * scale[axis] for axis in ("x", "y")}
    return Calibration(tuple(axes), tuple(scale.get(a, 1.0) for a in axes), tuple(origin.get(a, 0.0) for a in axes),
                       tuple(unit if a in scale else None for a in axes))


def tiff_calibration(tif: Any, axes: Sequence[str]) -> Calibration | None:
    """The calibration an OME-TIFF (OME-XML) or ImageJ TIFF records for its first series, or None.

    ``tif`` is an open :class:`tifffile.TiffFile`, ``axes`` its first series' lower-case axis names.
    Plain TIFF resolution tags (dots per inch of a scan or photo) are no physical pixel size and are ignored.
    """
    if tif.is_ome and tif.ome_metadata:
        found = _ome_xml_calibration(tif.ome_metadata, axes)
        if found is not None:
            return found
    if tif.is_imagej:
        return _imagej_calibration(tif, axes)
    return None


def task_name(class_names: Sequence[str], task: str | None = None) -> str:
    """What a model segments, as a layer and group name: its recorded task, else its class names."""
    text = task or "-".join(str(c) for c in class_names) or "labels"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-") or "labels"
    return f"labels_{name}" if name.isdigit() else name  # never a level's name ("0", "1", ...)


def multiscale_groups(root: Any) -> list[Any]:
    """The groups of an engine store that carry multiscales: the root, ``labels`` and the label images it lists."""
    groups = [root]
    labels = root.get("labels") if hasattr(root, "get") else None
    if labels is not None:
        groups.append(labels)
        for name in _ome(dict(labels.attrs)).get("labels") or []:
            child = labels.get(str(name))
            if child is not None:
                groups.append(child)
    return [group for group in groups if multiscales(dict(group.attrs))]


def label_colors(attrs: Mapping[str, Any]) -> dict[int, np.ndarray]:
    """``image-label`` colours as {label value: RGBA floats in [0, 1]} (empty when none are recorded)."""
    image_label = _ome(attrs).get("image-label") or {}
    return {
        int(c["label-value"]): np.asarray(c["rgba"], dtype=float) / 255.0
        for c in image_label.get("colors", [])
        if "label-value" in c and "rgba" in c
    }


def label_images(labels: Any) -> list[Any]:
    """The label images of an OME-Zarr ``labels`` group: itself when it is a pyramid (our stores),
    else the groups its ``labels`` attribute lists."""
    attrs = dict(labels.attrs)
    if multiscales(attrs):
        return [labels]
    names = _ome(attrs).get("labels") or []
    return [group for group in (labels.get(str(name)) for name in names) if group is not None]


# -- writing ----------------------------------------------------------------------------------


def multiscales_entry(name: str, levels: int, calibration: Calibration | None = None,
                      method: str = LABEL_METHOD, prefix: str = "") -> dict[str, Any]:
    """One OME-Zarr 0.5 multiscales entry for a pyramid whose level i (at ``prefix + str(i)``) is
    downsampled by 2**i along y and x, placed in physical space by ``calibration`` (pixels when None)."""
    calibration = calibration or yx_calibration(None)
    datasets = [
        {"path": f"{prefix}{level}", "coordinateTransformations": calibration.downsampled(level).transformations()}
        for level in range(levels)
    ]
    return {"name": name, "axes": calibration.axes_metadata(), "datasets": datasets, "metadata": {"method": method}}


def _omero(label: str, visible: bool, window: tuple[float, float] | None, color: str = "FFFFFF") -> dict[str, Any]:
    """omero rendering settings: napari-ome-zarr names a layer "<multiscales name>: <label>" and shows it
    only where ``active`` says so. A label image gets no ``window``: napari-ome-zarr would pass it to the
    Labels layer as contrast limits, which napari refuses."""
    channel: dict[str, Any] = {"label": label, "active": visible, "color": color}
    if window is not None:
        channel["window"] = {"start": window[0], "end": window[1], "min": window[0], "max": window[1]}
    return {"channels": [channel], "rdefs": {"model": "greyscale"}}


def labels_metadata(name: str, levels: int, colors: Mapping[int, Sequence[float]],
                    method: str = LABEL_METHOD, source: str | None = None,
                    calibration: Calibration | None = None, visible: bool | None = None) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attributes of a labels pyramid whose level i is downsampled by 2**i.

    ``colors`` maps label values to RGB(A) floats in [0, 1]; other OME-Zarr readers show them.
    ``source`` is the relative path of the image the labels belong to; ``calibration`` places level 0 in
    physical space; ``visible`` adds omero settings so that napari-ome-zarr shows the layer by that name.
    """
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [multiscales_entry(name, levels, calibration, method)],
        "image-label": {"version": "0.5"},
    }
    if visible is not None:
        ome["omero"] = _omero("labels", visible, None)
    if colors:
        ome["image-label"]["colors"] = [
            {"label-value": int(value), "rgba": [round(255 * float(v)) for v in rgba]}
            for value, rgba in colors.items()
        ]
    if source is not None:
        ome["image-label"]["source"] = {"image": source}
    return ome


def store_root_metadata(name: str, levels: int, classes: int, calibration: Calibration | None,
                        label_image: str) -> dict[str, Any]:
    """``ome`` attributes of an engine store's root: an OME-Zarr 0.5 image whose levels are the class-index
    arrays ``labels/0 ..`` (hidden), so OME-Zarr readers open the store and find its label image
    ``labels/<label_image>`` (listed in ``labels``' attributes) at the input's scale."""
    return {
        "version": "0.5",
        "multiscales": [multiscales_entry(name, levels, calibration, prefix="labels/")],
        "omero": _omero("class index", False, (0.0, float(max(classes - 1, 1)))),
    }


def pyramid_levels(shape: tuple[int, int], whole: tuple[int, int] | None = None) -> int:
    """Number of label levels for an image of ``shape``: halve while the long side stays at least
    :data:`MIN_LEVEL_SIDE` and, given ``whole`` (the sink's subdomain), while it halves evenly."""
    height, width = shape
    levels = 1
    while max(-(-height // 2 ** levels), -(-width // 2 ** levels)) >= MIN_LEVEL_SIDE:
        if whole is not None and (whole[0] % 2 ** levels or whole[1] % 2 ** levels):
            break
        levels += 1
    return levels


def downsample_mode(labels: np.ndarray) -> np.ndarray:
    """(h, w) -> (h/2, w/2): the most frequent label of each 2x2 block, top-left on ties."""
    h, w = labels.shape
    blocks = labels.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(h // 2, w // 2, 4)
    counts = (blocks[..., :, None] == blocks[..., None, :]).sum(-1)
    pick = np.argmax(counts, axis=-1)
    return np.take_along_axis(blocks, pick[..., None], axis=-1)[..., 0]


def downsample_mode_lazy(labels: Any) -> Any:
    """:func:`downsample_mode` of a 2D dask array of any size, block by block; an odd last row or
    column is paired with a copy of itself (the sink has its subdomain's own pixels there)."""
    import dask.array as da

    h, w = labels.shape
    padded = da.pad(labels, ((0, h % 2), (0, w % 2)), mode="edge") if h % 2 or w % 2 else labels
    even = tuple(max(2, c // 2 * 2) for c in padded.chunksize)
    padded = padded.rechunk(even)
    halves = tuple(tuple(c // 2 for c in sizes) for sizes in padded.chunks)
    return padded.map_blocks(downsample_mode, chunks=halves, dtype=labels.dtype)


#: OME-Zarr axis types of the axes a stack's planes run along.
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def with_leading_axes(attrs: Mapping[str, Any],
                      leading: Sequence[tuple[str, float, float, str | None]]) -> dict[str, Any]:
    """``attrs`` (an OME-Zarr group's, 0.4 or 0.5) with axes ``leading`` = (name, spacing, origin, unit) put
    in front of every multiscales entry: the labels of a stack carry the image's t/z axes, their names,
    types and spacing. Leading axes are never downsampled, so each level's scale starts with the same
    values; an entry that already has them is left alone, so it can be applied again on resume."""
    result = dict(attrs)
    inner = dict(result.get("ome") or result)
    names = [name for name, *_ in leading]
    entries = []
    for entry in inner.get("multiscales") or []:
        entry = dict(entry)
        if (axis_names(entry) or [])[:len(names)] != names:
            axes = [{"name": name, "type": AXIS_TYPES.get(name, "space"), **({"unit": unit} if unit else {})}
                    for name, _, _, unit in leading]
            entry["axes"] = axes + list(entry.get("axes") or [])
            entry["datasets"] = [_lead_transforms(dataset, leading) for dataset in entry.get("datasets") or []]
        entries.append(entry)
    inner["multiscales"] = entries
    if "ome" in result:
        result["ome"] = inner
        return result
    return inner


def _lead_transforms(dataset: Mapping[str, Any], leading: Sequence[tuple[str, float, float, str | None]]) -> dict:
    """A dataset's scale and translation with the leading axes' spacing and origin in front (a dataset
    without a translation gets one only when a leading axis has an origin)."""
    transforms = [dict(transform) for transform in dataset.get("coordinateTransformations") or []]
    spatial = 2
    for transform in transforms:
        if transform.get("type") == "scale" and "scale" in transform:
            transform["scale"] = [float(scale) for _, scale, _, _ in leading] + list(transform["scale"])
            spatial = len(transform["scale"]) - len(leading)
    origins = [float(origin) for _, _, origin, _ in leading]
    shifted = [t for t in transforms if t.get("type") == "translation" and "translation" in t]
    for transform in shifted:
        transform["translation"] = origins + list(transform["translation"])
    if not shifted and any(origins):
        transforms.append({"type": "translation", "translation": origins + [0.0] * spatial})
    return {**dataset, "coordinateTransformations": transforms}
