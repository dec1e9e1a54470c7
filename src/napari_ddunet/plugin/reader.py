"""napari reader for .zarr, .ome.zarr and .tif/.tiff that never loads the image whole.

Every level becomes a dask array over the file's own chunks or tiles, so napari reads only what it
shows. Files with several resolution levels (OME-Zarr multiscales, pyramidal TIFF) open as a
multiscale layer. A store written by our engine (a ``labels`` pyramid and feature maps) opens as
the Labels layer with the checkpoint's colours, plus the feature maps as hidden image layers.
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
    if ome.multiscales(dict(root.attrs)):
        data, multiscale = _lazy(open_levels(root).levels)
        layers.append((data, {"name": name, "multiscale": multiscale}, "image"))
    members = dict(root.members())
    labels = members.get("labels")
    if isinstance(labels, zarr.Group):
        for group in ome.label_images(labels):
            data, multiscale = _lazy(open_levels(group).levels)
            meta: dict[str, Any] = {"name": f"{name} labels", "multiscale": multiscale}
            colors = _colormap(group)
            if colors is not None:
                meta["colormap"] = colors
            layers.append((data, meta, "labels"))
    for key in ("bottleneck", "communicated"):
        member = members.get(key)
        if isinstance(member, zarr.Array):
            layers.append((da.from_zarr(member), {"name": f"{name} {key}", "visible": False}, "image"))
    if not layers:
        arrays = [m for _, m in sorted(members.items()) if isinstance(m, zarr.Array)]
        layers = [(da.from_zarr(a), {"name": f"{name} {a.basename}"}, "image") for a in arrays]
    return layers


def _read_tiff(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    data, multiscale = _lazy(open_levels(path).levels)
    return [(data, {"name": _layer_name(path), "multiscale": multiscale}, "image")]


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
