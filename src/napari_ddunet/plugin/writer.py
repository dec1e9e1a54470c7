"""napari writer: a Labels layer to an OME-Zarr (0.5) labels pyramid, chunk by chunk.

Layout matches the engine's output store: ``<path>/labels/0, 1, ...`` with multiscales and
``image-label`` colour metadata on ``<path>/labels``, so our reader (and other OME-Zarr tools)
open it again as labels with the same colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from napari_ddunet.core.inference.sink import ome_labels_metadata

CHUNK = 512
MIN_LEVEL_SIDE = 256


def _colors(meta: dict[str, Any]) -> dict[int, Any]:
    mapping = getattr(meta.get("colormap"), "color_dict", None) or {}
    return {int(k): np.asarray(c).ravel()[:4] for k, c in mapping.items() if k is not None}


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
    level = base.astype(dtype)
    index = 0
    while True:
        chunks = (min(CHUNK, level.shape[0]), min(CHUNK, level.shape[1]))
        target = group.create_array(str(index), shape=level.shape, dtype=dtype, chunks=chunks, fill_value=0)
        da.store(level.rechunk(chunks), target, lock=False)
        if min(level.shape) // 2 < MIN_LEVEL_SIDE:
            break
        level = level[::2, ::2]  # nearest neighbour: labels must stay labels
        index += 1
    group.attrs["ome"] = ome_labels_metadata(meta.get("name", "labels"), index + 1, _colors(meta),
                                             "2x2 subsampling (nearest)")
    return [str(out)]
