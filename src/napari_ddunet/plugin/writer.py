"""napari writer: a Labels layer to an OME-Zarr (0.5) labels pyramid, chunk by chunk.

Layout, pyramid and metadata are the engine's (:mod:`napari_ddunet.core.io.ome`):
``<path>/labels/0, 1, ...`` with multiscales and ``image-label`` colour metadata on ``<path>/labels``,
so our reader (and other OME-Zarr tools) open it again as labels with the same colours, at the
layer's scale, translate and units (its coordinateTransformations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from napari_ddunet.core.io import ome

CHUNK = 512


def _colors(meta: dict[str, Any]) -> dict[int, Any]:
    mapping = getattr(meta.get("colormap"), "color_dict", None) or {}
    return {int(k): np.asarray(c).ravel()[:4] for k, c in mapping.items() if k is not None}


def _calibration(meta: dict[str, Any]) -> ome.Calibration | None:
    """Where the layer lies: its scale, translate and units, as napari hands them to a writer."""
    if meta.get("scale") is None:
        return None
    units = meta.get("units")
    return ome.Calibration.of_axes(("y", "x"), meta["scale"], meta.get("translate"),
                                   None if units is None else [str(u) for u in units])


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer. Returns the written path (napari's contract)."""
    if isinstance(data, list):  # multiscale layer: the full-resolution level is the truth
        data = data[0]
    base = da.asarray(data)
    if base.ndim != 2:
        raise ValueError(f"only 2D labels can be written as OME-Zarr by napari-ddunet, got shape {base.shape}")
    if base.dtype in (np.uint8, np.uint16):
        dtype = base.dtype
    else:
        dtype = np.uint8 if int(base.max().compute()) < 256 else np.uint16
    out = Path(path)
    if not out.name.endswith((".zarr",)):
        out = out.with_name(out.name + ".ome.zarr")
    root = zarr.open_group(str(out), mode="w-")
    group = root.create_group("labels")
    levels = ome.pyramid_levels(base.shape)
    level = base.astype(dtype)
    for index in range(levels):
        if index:
            level = ome.downsample_mode_lazy(level)
        chunks = (min(CHUNK, level.shape[0]), min(CHUNK, level.shape[1]))
        target = group.create_array(str(index), shape=level.shape, dtype=dtype, chunks=chunks, fill_value=0)
        da.store(level.rechunk(chunks), target, lock=False)
        level = da.from_zarr(target)  # the next level reads this one back instead of recomputing it
    group.attrs["ome"] = ome.labels_metadata(meta.get("name", "labels"), levels, _colors(meta),
                                             calibration=_calibration(meta))
    return [str(out)]
