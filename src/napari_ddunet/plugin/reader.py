"""napari reader for .zarr, .ome.zarr and .tif/.tiff that never loads the image whole.

Every level becomes a dask array over the file's own chunks or tiles, so napari reads only what it
shows. Files with several resolution levels (OME-Zarr multiscales, pyramidal TIFF) open as a
multiscale layer. A store written by our engine (a ``labels`` pyramid and feature maps) opens as
the Labels layer with the checkpoint's colours, plus the feature maps as hidden image layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

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


def _multiscales(group: zarr.Group) -> list[dict[str, Any]] | None:
    attrs = dict(group.attrs)
    return (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")


def _pyramid(group: zarr.Group) -> list[da.Array] | None:
    """Levels of an OME-Zarr multiscale group (0.4 or 0.5 metadata), full resolution first."""
    multiscales = _multiscales(group)
    if not multiscales:
        return None
    return [da.from_zarr(group[d["path"]]) for d in multiscales[0]["datasets"]]


def _one_or_many(levels: list[da.Array]) -> tuple[Any, bool]:
    return (levels, True) if len(levels) > 1 else (levels[0], False)


def _label_colors(group: zarr.Group) -> dict[int, Any] | None:
    attrs = dict(group.attrs)
    image_label = (attrs.get("ome") or {}).get("image-label") or attrs.get("image-label") or {}
    colors = {
        int(c["label-value"]): np.asarray(c["rgba"], dtype=float) / 255.0
        for c in image_label.get("colors", [])
        if "label-value" in c and "rgba" in c
    }
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
    levels = _pyramid(root)
    if levels is not None:
        data, multiscale = _one_or_many(levels)
        layers.append((data, {"name": name, "multiscale": multiscale}, "image"))
    members = dict(root.members())
    labels = members.get("labels")
    if isinstance(labels, zarr.Group):
        label_groups = [labels] if _multiscales(labels) else [
            g for g in (labels.get(str(n)) for n in (dict(labels.attrs).get("labels") or [])) if g is not None
        ]
        for group in label_groups:
            data, multiscale = _one_or_many(_pyramid(group))
            meta: dict[str, Any] = {"name": f"{name} labels", "multiscale": multiscale}
            colors = _label_colors(group)
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
    import tifffile

    store = tifffile.imread(str(path), aszarr=True)
    root = zarr.open(store, mode="r")
    if isinstance(root, zarr.Array):
        levels = [da.from_zarr(root)]
    else:
        levels = [da.from_zarr(root[k]) for k in sorted(root.array_keys(), key=int)]
    data, multiscale = _one_or_many(levels)
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
