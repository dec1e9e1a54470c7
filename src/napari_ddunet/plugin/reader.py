"""napari reader for .zarr, .ome.zarr and .tif/.tiff that never loads the image whole.

Every level becomes a dask array over the file's own chunks or tiles, so napari reads only what it
shows. Files with several resolution levels (OME-Zarr multiscales, pyramidal TIFF) open as a
multiscale layer. A store written by our engine (a ``labels`` pyramid and feature maps) opens as
the Labels layer with the checkpoint's colours, plus the feature maps as hidden image layers. Every
layer is placed by the file's calibration (OME-Zarr coordinateTransformations, OME-XML, ImageJ tags):
scale, translate and units, so labels written for an image lie exactly over it.
Opening files and reading OME metadata are :mod:`napari_ddunet.core.io`'s job; this module only
turns what it opens into napari layer tuples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from napari_ddunet.core.io import ome
from napari_ddunet.core.io.images import open_levels

SUFFIXES = (".zarr", ".ome.zarr", ".tif", ".tiff")


def _is_supported(path: str) -> bool:
    return path.rstrip("/\\").lower().endswith(SUFFIXES)


def napari_get_reader(path: str | list[str]):
    """npe2 reader hook: our reader for one supported path, else None so napari tries others."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return read if _is_supported(str(path)) else None


def _layer_name(path: Path) -> str:
    name = path.name.rstrip("/\\")
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _lazy(levels: list[Any]) -> tuple[Any, bool]:
    """napari layer data: dask arrays over the file's own chunks, several levels as a multiscale list."""
    arrays = [da.from_zarr(level) if isinstance(level, zarr.Array) else da.asarray(level) for level in levels]
    return (arrays, True) if len(arrays) > 1 else (arrays[0], False)


def _placement(calibration: ome.Calibration | None, ndim: int) -> dict[str, Any]:
    """napari layer keywords that place an ``ndim``-D layer as ``calibration`` says (nothing without one)."""
    if calibration is None or len(calibration.axes) != ndim:
        return {}
    placed: dict[str, Any] = {"scale": list(calibration.scale), "translate": list(calibration.translate)}
    if any(calibration.units):
        placed["units"] = [unit or "pixel" for unit in calibration.units]
    return placed


def _colormap(group: zarr.Group) -> dict[int | None, Any] | None:
    colors = ome.label_colors(dict(group.attrs))
    if not colors:
        return None
    colors.setdefault(0, np.zeros(4))
    return {None: np.zeros(4), **colors}


def _read_zarr(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    root = zarr.open(str(path), mode="r")
    name = _layer_name(path)
    if isinstance(root, zarr.Array):
        return [(da.from_zarr(root), {"name": name}, "image")]
    layers: list[tuple[Any, dict[str, Any], str]] = []
    ours = "napari_ddunet" in dict(root.attrs)  # an engine store: its root image is its own class-index map
    if ome.multiscales(dict(root.attrs)) and not ours:
        opened = open_levels(root)
        data, multiscale = _lazy(opened.levels)
        layers.append((data, {"name": name, "multiscale": multiscale,
                              **_placement(opened.calibration, opened.array.ndim)}, "image"))
    members = dict(root.members())
    labels = members.get("labels")
    if isinstance(labels, zarr.Group):
        for group in ome.label_images(labels):
            opened = open_levels(group)
            data, multiscale = _lazy(opened.levels)
            meta: dict[str, Any] = {"name": f"{name} labels", "multiscale": multiscale,
                                    **_placement(opened.calibration, opened.array.ndim)}
            colors = _colormap(group)
            if colors is not None:
                meta["colormap"] = colors
            layers.append((data, meta, "labels"))
    stored = dict(root.attrs).get("napari_ddunet") or {}
    for key in ("bottleneck", "communicated"):
        member = members.get(key)
        if isinstance(member, zarr.Array):
            placed = _feature_placement(stored, member.ndim)
            layers.append((da.from_zarr(member), {"name": f"{name} {key}", "visible": False, **placed}, "image"))
    if not layers:
        arrays = [m for _, m in sorted(members.items()) if isinstance(m, zarr.Array)]
        layers = [(da.from_zarr(a), {"name": f"{name} {a.basename}"}, "image") for a in arrays]
    return layers


def _feature_placement(stored: dict[str, Any], ndim: int) -> dict[str, Any]:
    """Bottleneck maps (F, h, w) are 2**depth input pixels per pixel, centred on the block each summarises."""
    depth = (stored.get("config") or {}).get("depth")
    if depth is None:
        return {}
    calibration = ome.yx_calibration(ome.Calibration.from_dict(stored.get("calibration"))).downsampled(int(depth))
    channels = ome.Calibration(("c",), (1.0,), (0.0,), (None,))
    whole = ome.Calibration(channels.axes + calibration.axes, channels.scale + calibration.scale,
                            channels.translate + calibration.translate, channels.units + calibration.units)
    return _placement(whole, ndim)


def _read_tiff(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    opened = open_levels(path)
    data, multiscale = _lazy(opened.levels)
    return [(data, {"name": _layer_name(path), "multiscale": multiscale,
                    **_placement(opened.calibration, opened.array.ndim)}, "image")]


def read(path: str | list[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data tuples for napari; raises FileNotFoundError/ValueError with one clear line."""
    if isinstance(path, list | tuple):
        path = path[0]
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.name.lower().endswith((".tif", ".tiff")):
        return _read_tiff(path)
    return _read_zarr(path)
