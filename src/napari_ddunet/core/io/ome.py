"""OME-Zarr (0.4 and 0.5) metadata and the label pyramid, written by the engine's sink and the napari writer.

One pyramid rule for both: level l is level l-1 downsampled 2x by the mode of each 2x2 block (ties go
to the top-left pixel, i.e. nearest), and levels are added while the long side stays at least
:data:`MIN_LEVEL_SIDE` pixels (and, for the sink, while its subdomains stay whole).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Pyramid levels stop once the long side would fall below this many pixels.
MIN_LEVEL_SIDE = 64
#: How every label pyramid here is made, as recorded in its multiscales metadata.
LABEL_METHOD = "2x2 mode (ties: top-left, i.e. nearest)"


# -- reading ----------------------------------------------------------------------------------


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """0.5 keeps its metadata under ``ome``; 0.4 at the top level."""
    return attrs.get("ome") or attrs


def multiscales(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first multiscales entry of a group's attributes, or None."""
    entries = _ome(attrs).get("multiscales")
    return dict(entries[0]) if entries else None


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


def labels_metadata(name: str, levels: int, colors: Mapping[int, Sequence[float]],
                    method: str = LABEL_METHOD, source: str | None = None) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attributes of a 2D labels pyramid whose level i is downsampled by 2**i.

    ``colors`` maps label values to RGB(A) floats in [0, 1]; other OME-Zarr readers show them.
    ``source`` is the relative path of the image the labels belong to.
    """
    datasets = [
        {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": [2.0 ** level] * 2}]}
        for level in range(levels)
    ]
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [{
            "name": name,
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": datasets,
            "metadata": {"method": method},
        }],
        "image-label": {"version": "0.5"},
    }
    if colors:
        ome["image-label"]["colors"] = [
            {"label-value": int(value), "rgba": [round(255 * float(v)) for v in rgba]}
            for value, rgba in colors.items()
        ]
    if source is not None:
        ome["image-label"]["source"] = {"image": source}
    return ome


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
