"""Where segmentation results go: numpy arrays in memory, or a zarr v3 store on disk.

Store layout (a zarr v3 group, see docs/engine.md):

- ``labels/0 .. labels/L``: OME-Zarr 0.5 multiscale label pyramid (uint8/uint16); level l is level
  l-1 downsampled 2x by the mode of each 2x2 block (ties go to the top-left pixel, i.e. nearest).
- ``probabilities`` (K, H, W) float16, ``logits`` (K, H, W) in the compute dtype (on request).
- ``bottleneck`` / ``communicated`` (F, ceil(H/2**D), ceil(W/2**D)) in the compute dtype (features=True).
- ``_work/bottleneck`` (F, rows*hb, cols*wb): the F-channel bottleneck of every encoded subdomain,
  ``_work/encoded`` and ``_work/done`` (rows, cols) uint8: the progress record that resume reads.

Every array is chunked by whole subdomains (one chunk per subdomain per level), so each chunk has
exactly one writer; the progress arrays have one chunk per subdomain too. A subdomain is marked done only after
all its data is written (zarr's local store writes each chunk atomically), so a killed run leaves a
store whose done subdomains are complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.grid import GridPlan
from napari_ddunet.core.io import ome
from napari_ddunet.core.io.images import open_levels

#: Version of the store layout written into the ``napari_ddunet`` attributes.
STORE_VERSION = 1


class OutputError(DDUNetError):
    """An output location that cannot be used (exists, not writable, made with other settings)."""


def label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def pyramid_levels(plan: GridPlan) -> int:
    """Number of label levels: :func:`~napari_ddunet.core.io.ome.pyramid_levels` with whole subdomains."""
    return ome.pyramid_levels(plan.image_shape, whole=plan.subdomain)


def check_output_location(output: str | Path, *, overwrite: bool, resume: bool) -> Path:
    """Refuse an existing output unless told, and an unwritable location; touches nothing."""
    path = Path(output)
    if path.exists():
        if not (overwrite or resume):
            raise OutputError(f"output {path} exists; pass overwrite=True (--overwrite) or resume=True (--resume)")
        if not path.is_dir() or not ((path / "zarr.json").exists() or not any(path.iterdir())):
            raise OutputError(f"output {path} exists and is not a zarr store; refusing to replace it")
        if not os.access(path, os.W_OK):
            raise OutputError(f"output {path} is not writable")
        return path
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output folder {parent} does not exist")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"output location {parent} is not writable")
    return path


class Sink:
    """Arrays that receive one subdomain at a time; numpy (``path=None``) or a zarr v3 store."""

    def __init__(self, plan: GridPlan, *, path: Path | None, num_classes: int, comm_features: int,
                 compute_dtype: np.dtype, probabilities: bool, features: bool, logits: bool,
                 meta: dict[str, Any], colors: list[list[float]] | None = None, resume: bool = False) -> None:
        self.plan = plan
        self.path = path
        self.levels = pyramid_levels(plan) if path is not None else 1
        height, width = plan.image_shape
        ds = plan.downsampling
        bh, bw = -(-height // ds), -(-width // ds)
        h, w = plan.subdomain
        hb, wb = plan.bottleneck_tile
        rows, cols = plan.grid
        f = comm_features
        specs: dict[str, tuple[tuple[int, ...], tuple[int, ...], np.dtype]] = {}
        for level in range(self.levels):
            s = 2 ** level
            specs[f"labels/{level}"] = ((-(-height // s), -(-width // s)), (h // s, w // s), label_dtype(num_classes))
        if probabilities:
            specs["probabilities"] = ((num_classes, height, width), (num_classes, h, w), np.dtype(np.float16))
        if logits:
            specs["logits"] = ((num_classes, height, width), (num_classes, h, w), compute_dtype)
        if features and f:
            specs["bottleneck"] = ((f, bh, bw), (f, hb, wb), compute_dtype)
            specs["communicated"] = ((f, bh, bw), (f, hb, wb), compute_dtype)
        if path is not None:
            if f:
                specs["_work/bottleneck"] = ((f, rows * hb, cols * wb), (f, hb, wb), compute_dtype)
            specs["_work/encoded"] = ((rows, cols), (1, 1), np.dtype(np.uint8))
        specs["_work/done"] = ((rows, cols), (1, 1), np.dtype(np.uint8))
        self.arrays: dict[str, Any] = {}
        if path is None:
            for name, (shape, _, dtype) in specs.items():
                self.arrays[name] = np.zeros(shape, dtype=dtype)
            self.meta = meta
            return
        import zarr

        if resume and (path / "zarr.json").exists():
            try:
                root = zarr.open_group(str(path), mode="r+")
                stored = dict(root.attrs).get("napari_ddunet")
            except Exception as error:
                raise OutputError(f"cannot resume: {path} is not a readable zarr store ({error})") from None
            if not isinstance(stored, dict):
                raise OutputError(f"cannot resume: {path} is not a napari-ddunet output")
            for key in ("store_version", "notation", "weights", "image_shape", "subdomain_size", "region",
                        "communicate", "dtype", "normalization", "pad_mode", "outputs"):
                if stored.get(key) != meta.get(key):
                    raise OutputError(
                        f"cannot resume {path}: it was made with {key}={stored.get(key)!r}, this run has "
                        f"{meta.get(key)!r}; use overwrite instead"
                    )
            try:
                for name in specs:
                    self.arrays[name] = root[name]
            except KeyError as error:
                raise OutputError(f"cannot resume: {path} lacks {error}; use overwrite instead") from None
            _check_chunk_ownership(path, specs, self.arrays)
            self.root = root
            self.meta = stored
            return
        if path.exists():
            shutil.rmtree(path)
        root = zarr.open_group(str(path), mode="w")
        for name, (shape, chunks, dtype) in specs.items():
            dims = ("y", "x") if len(shape) == 2 else ("c", "y", "x")
            if name.startswith("_work/"):
                dims = ("row", "col") if len(shape) == 2 else ("c", "y", "x")
            root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, dimension_names=dims)
            self.arrays[name] = root[name]
        labels = root["labels"]
        label_colors = {i: c for i, c in enumerate(colors)} if colors else {}
        labels.attrs["ome"] = ome.labels_metadata("labels", self.levels, label_colors, source="../")
        root.attrs["napari_ddunet"] = meta
        self.root = root
        self.meta = meta

    # -- public views -------------------------------------------------------------------------

    def outputs(self) -> dict[str, Any]:
        """The user-facing arrays: "labels", optional "probabilities", "logits", "bottleneck", "communicated"."""
        names = {"labels": "labels/0", "probabilities": "probabilities", "logits": "logits",
                 "bottleneck": "bottleneck", "communicated": "communicated"}
        return {key: self.arrays[name] for key, name in names.items() if name in self.arrays}

    # -- progress record ----------------------------------------------------------------------

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.arrays["_work/done"][...], dtype=bool)

    def encoded_mask(self) -> np.ndarray:
        if "_work/encoded" not in self.arrays:
            return np.zeros(self.plan.grid, dtype=bool)
        return np.asarray(self.arrays["_work/encoded"][...], dtype=bool)

    def mark(self, name: str, row: int, cols: list[int]) -> None:
        """Record subdomains (row, c) as "encoded" or "done"; one chunk per subdomain, so no read-modify-write."""
        for _, c0, c1 in _runs(cols):
            self.arrays[f"_work/{name}"][row, c0:c1] = 1

    def set_attr(self, key: str, value: Any) -> None:
        self.meta = {**self.meta, key: value}
        if self.path is not None:
            self.root.attrs["napari_ddunet"] = self.meta

    # -- subdomain writes ---------------------------------------------------------------------

    def write_tiles(self, row: int, cols: list[int], labels: np.ndarray, probabilities: np.ndarray | None,
                    logits: np.ndarray | None) -> list[tuple[int, int, int, int]]:
        """Write the (uncropped) results of subdomains (row, c); one zarr call per level and run of columns.

        Returns each subdomain's (y0, y1, x0, x1) box in the image.
        """
        h, w = self.plan.subdomain
        height, width = self.plan.image_shape
        y0, y1 = row * h, min((row + 1) * h, height)
        for i, c0, c1 in _runs(cols):
            n = c1 - c0
            x0, x1 = c0 * w, min(c1 * w, width)
            level_labels = _side_by_side(labels[i:i + n][:, None])[0]
            for level in range(self.levels):
                if level:
                    level_labels = ome.downsample_mode(level_labels)
                s = 2 ** level
                target = self.arrays[f"labels/{level}"]
                ly0, lx0 = y0 // s, x0 // s
                ly1 = min(target.shape[0], ly0 + level_labels.shape[0])
                lx1 = min(target.shape[1], lx0 + level_labels.shape[1])
                target[ly0:ly1, lx0:lx1] = level_labels[: ly1 - ly0, : lx1 - lx0]
            if probabilities is not None and "probabilities" in self.arrays:
                block = _side_by_side(probabilities[i:i + n])
                self.arrays["probabilities"][:, y0:y1, x0:x1] = block[:, : y1 - y0, : x1 - x0].astype(np.float16)
            if logits is not None and "logits" in self.arrays:
                self.arrays["logits"][:, y0:y1, x0:x1] = _side_by_side(logits[i:i + n])[:, : y1 - y0, : x1 - x0]
        return [self.plan.cropped_box(row, c) for c in cols]

    def write_features(self, row: int, cols: list[int], name: str, tiles: np.ndarray) -> None:
        """F-channel bottleneck ("bottleneck") or communicated ("communicated") maps of subdomains (row, c)."""
        if name not in self.arrays:
            return
        hb, wb = self.plan.bottleneck_tile
        target = self.arrays[name]
        y0 = row * hb
        y1 = min(target.shape[1], y0 + hb)
        for i, c0, c1 in _runs(cols):
            x0, x1 = c0 * wb, min(target.shape[2], c1 * wb)
            target[:, y0:y1, x0:x1] = _side_by_side(tiles[i:i + c1 - c0])[:, : y1 - y0, : x1 - x0]

    def store_bottleneck(self, row: int, cols: list[int], tiles: np.ndarray) -> None:
        """Keep the F-channel bottlenecks of subdomains (row, c) for resume (zarr stores only)."""
        if "_work/bottleneck" not in self.arrays:
            return
        hb, wb = self.plan.bottleneck_tile
        for i, c0, c1 in _runs(cols):
            self.arrays["_work/bottleneck"][:, row * hb:(row + 1) * hb, c0 * wb:c1 * wb] = \
                _side_by_side(tiles[i:i + c1 - c0])

    def load_bottleneck(self, row: int, col: int) -> np.ndarray:
        hb, wb = self.plan.bottleneck_tile
        return np.asarray(self.arrays["_work/bottleneck"][:, row * hb:(row + 1) * hb, col * wb:(col + 1) * wb])


def _check_chunk_ownership(path: Path, specs: dict[str, tuple[tuple[int, ...], tuple[int, ...], np.dtype]],
                           arrays: dict[str, Any]) -> None:
    """Every writer (thread, device worker, torchrun rank) owns whole chunks only if each array is chunked
    by whole subdomains, as :class:`Sink` creates it; a reopened store chunked otherwise would let two
    writers read-modify-write one chunk and lose one's pixels, so it is refused."""
    for name, (shape, chunks, _) in specs.items():
        found = arrays[name]
        if tuple(found.shape) != shape or tuple(found.chunks) != chunks:
            raise OutputError(
                f"cannot resume {path}: {name} has shape {tuple(found.shape)} in chunks {tuple(found.chunks)}, "
                f"this run writes shape {shape} in chunks of one subdomain {chunks}; use overwrite instead"
            )


def _runs(cols: list[int]) -> list[tuple[int, int, int]]:
    """Contiguous runs of column indices as (position in cols, first col, end col)."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(cols) + 1):
        if i == len(cols) or cols[i] != cols[i - 1] + 1:
            runs.append((start, cols[start], cols[i - 1] + 1))
            start = i
    return runs


def _side_by_side(tiles: np.ndarray) -> np.ndarray:
    """(n, C, h, w) subdomains of one row -> (C, h, n*w)."""
    n, c, h, w = tiles.shape
    return tiles.transpose(1, 2, 0, 3).reshape(c, h, n * w)


def open_output(path: str | Path) -> dict[str, Any]:
    """Read a napari-ddunet store back: "labels" (level 0), "labels/<l>" levels, "probabilities",
    "logits", "bottleneck", "communicated" where present, "done" (rows, cols) progress, and "attrs"."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise OutputError(f"no output at {path}")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as error:
        raise OutputError(f"{path} is not a zarr store: {error}") from None
    attrs = dict(root.attrs).get("napari_ddunet")
    if not isinstance(attrs, dict):
        raise OutputError(f"{path} is not a napari-ddunet output")
    result: dict[str, Any] = {"attrs": attrs}
    levels = open_levels(root["labels"]).levels
    for level, array in enumerate(levels):
        result[f"labels/{level}"] = array
    result["labels"] = levels[0]
    for name in ("probabilities", "logits", "bottleneck", "communicated"):
        if name in root:
            result[name] = root[name]
    result["done"] = root["_work/done"]
    return result
