"""Where segmentation results go: numpy arrays in memory, or a zarr v3 store on disk.

Store layout (a zarr v3 group, see docs/engine.md):

- ``labels/0 .. labels/L``: OME-Zarr 0.5 multiscale label pyramid (uint8/uint16); level l is level
  l-1 downsampled 2x by the mode of each 2x2 block (ties go to the top-left pixel, i.e. nearest).
- ``labels/<task>/0 .. L``: the same pyramid as a standard OME-Zarr label image; the root's ``ome``
  attributes make the store an OME-Zarr image over ``labels/0 ..`` (:meth:`Sink._write_ome`).
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

from collections.abc import Callable, Sequence
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


class Sink:
    """Arrays that receive one subdomain at a time; numpy (``path=None``) or a zarr v3 store."""

    def __init__(self, plan: GridPlan, *, path: Path | None, num_classes: int, comm_features: int,
                 compute_dtype: np.dtype, probabilities: bool, features: bool, logits: bool,
                 meta: dict[str, Any], colors: list[list[float]] | None = None, resume: bool = False,
                 mismatch: Callable[[dict[str, Any]], str | None] | None = None, verify: bool = True,
                 leading: Sequence[tuple[str, int]] = ()) -> None:
        self.plan = plan
        self.leading = tuple((str(name), int(size)) for name, size in leading)  # a stack's (axis, planes)
        self.note = ""
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
        # a store also holds its labels as a standard OME-Zarr label image, labels/<task>/<level>: OME-Zarr
        # readers (napari-ome-zarr, ome-zarr-py) find label images only there, while labels/<level> stays
        # where resume and older stores have it
        self.label_image = f"labels/{meta['label_image']}" if path is not None and meta.get("label_image") else None
        for level in range(self.levels):
            s = 2 ** level
            specs[f"labels/{level}"] = ((-(-height // s), -(-width // s)), (h // s, w // s), label_dtype(num_classes))
            if self.label_image is not None:
                specs[f"{self.label_image}/{level}"] = specs[f"labels/{level}"]
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
        if self.leading:
            # a stack: every array gains its leading axes in front, chunked one plane at a time
            sizes = tuple(size for _, size in self.leading)
            specs = {name: ((*sizes, *shape), (1,) * len(sizes) + chunks, dtype)
                     for name, (shape, chunks, dtype) in specs.items()}
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
            problem = mismatch(stored) if mismatch is not None else None
            if problem:
                raise OutputError(f"cannot resume {path}: {problem}; use overwrite instead")
            if self.label_image is not None and f"{self.label_image}/0" not in root:
                # a store written before label images existed resumes without one
                specs = {name: spec for name, spec in specs.items() if not name.startswith(self.label_image + "/")}
                self.label_image = None
            for name in specs:
                try:
                    self.arrays[name] = root[name].with_config({"write_empty_chunks": True})
                except KeyError:
                    raise OutputError(f"cannot resume: {path} lacks {name!r}; use overwrite instead") from None
                except Exception as error:
                    raise OutputError(f"cannot resume: {path}/{name} is damaged ({_first_line(error)}); "
                                      "use overwrite instead") from None
            _check_chunk_ownership(path, specs, self.arrays)
            self.root = root
            self.meta = stored
            if verify:
                self.note = self.verify_progress()
            return
        # never removes anything: the output guard cleared an old store (under its lock) before this;
        # "w-" fails instead of deleting whatever is there. The store says it is napari-ddunet's from its
        # first file on, so that one cut short (a full disk) can still be overwritten or resumed
        root = zarr.open_group(str(path), mode="w-", attributes={"napari_ddunet": meta})
        for name, (shape, chunks, dtype) in specs.items():
            plane = len(shape) - len(self.leading)
            dims = ("y", "x") if plane == 2 else ("c", "y", "x")
            if name.startswith("_work/"):
                dims = ("row", "col") if plane == 2 else ("c", "y", "x")
            dims = tuple(axis for axis, _ in self.leading) + dims
            # every chunk is written, even one of zeros, so that resume can tell a lost chunk from an empty one
            self.arrays[name] = root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                                  dimension_names=dims, config={"write_empty_chunks": True})
        self._write_ome(root, colors, meta)
        self.root = root
        self.meta = meta

    def _write_ome(self, root: Any, colors: list[list[float]] | None, meta: dict[str, Any]) -> None:
        """OME-Zarr 0.5 metadata: the root an image (the class-index pyramid ``labels/0 ..``), ``labels`` the
        pyramid as before and the list of label images, ``labels/<task>`` the label image OME-Zarr readers
        show; every level placed at the input's calibration (pixel size, origin, units)."""
        label_colors = {i: c for i, c in enumerate(colors)} if colors else {}
        calibration = ome.yx_calibration(ome.Calibration.from_dict(meta.get("calibration")))
        labels = ome.labels_metadata("labels", self.levels, label_colors, source="../", calibration=calibration)
        if self.label_image is None:
            root["labels"].attrs["ome"] = labels
            return
        task = meta["label_image"]
        root["labels"].attrs["ome"] = {**labels, "labels": [task]}
        root[self.label_image].attrs["ome"] = ome.labels_metadata(
            task, self.levels, label_colors, source="../../", calibration=calibration, visible=True)
        root.attrs["ome"] = ome.store_root_metadata(task, self.levels, max(len(label_colors), 2), calibration, task)

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

    def verify_progress(self) -> str:
        """Trust the progress record only where the store holds the data; returns a note for the first event.

        A subdomain marked done whose chunk is missing from any output array (a store that records that every
        chunk is written, even one of zeros) or whose level-0 label chunk does not decode is un-marked, and so
        is an encoded subdomain whose stored bottleneck is missing or does not decode: the run recomputes them.
        Chunk presence comes from one key listing per array (a lost chunk would read as zeros); decoding costs
        about a millisecond per chunk in zarr, so only the labels and the bottlenecks this run reads back are
        decoded, a bounded block at a time. A truncated chunk elsewhere fails loudly when read, never as zeros.
        """
        done, damaged_done = self._read_flags("_work/done")
        encoded, damaged_encoded = self._read_flags("_work/encoded")
        checked = self.meta.get("empty_chunks") == "written"
        lost: set[str] = set()
        bad_done = damaged_done.copy()
        bad_encoded = damaged_encoded.copy()
        for name, array in self.arrays.items():
            flags, bad = (encoded, bad_encoded) if name == "_work/bottleneck" else (done, bad_done)
            if name in ("_work/done", "_work/encoded") or not flags.any():
                continue
            missing = _missing_chunks(array, flags) if checked else np.zeros_like(flags)
            if name in DECODED:
                missing |= _undecodable_chunks(array, flags & ~missing)
            if missing.any():
                lost.add(name)
                bad |= missing
        bad_done &= done | damaged_done
        bad_encoded &= encoded | damaged_encoded
        for name, bad in (("_work/done", bad_done), ("_work/encoded", bad_encoded)):
            for index in zip(*np.nonzero(bad), strict=True):
                self.arrays[name][index] = 0
        notes = []
        if bad_done.any():
            notes.append(f"{int(bad_done.sum())} subdomains marked done have missing or unreadable chunks "
                         f"({', '.join(sorted(lost - {'_work/bottleneck'})) or '_work/done'}); recomputing them")
        if bad_encoded.any():
            notes.append(f"{int(bad_encoded.sum())} stored bottlenecks are missing or unreadable; re-encoding them")
        if notes and self.meta.get("complete"):
            self.set_attr("complete", False)
        return "; ".join(f"resume: {n}" for n in notes)

    def _read_flags(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A progress array as booleans, and where its chunks do not decode (read as "not done")."""
        shape = tuple(self.arrays["_work/done"].shape)
        if name not in self.arrays:
            return np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
        array = self.arrays[name]
        try:
            return np.asarray(array[...], dtype=bool), np.zeros(shape, dtype=bool)
        except Exception:
            flags, damaged = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
            for index in np.ndindex(*shape):
                try:
                    flags[index] = bool(array[index])
                except Exception:
                    damaged[index] = True
            return flags, damaged

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
                copy = self.arrays.get(f"{self.label_image}/{level}")
                if copy is not None:
                    copy[ly0:ly1, lx0:lx1] = level_labels[: ly1 - ly0, : lx1 - lx0]
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _chunk(array: Any, index: tuple[int, ...], whole_row: bool = False) -> tuple[Any, ...]:
    """The block of ``array`` holding subdomain ``index`` = (*planes, row, col) (with ``whole_row``, all columns
    of that row): the planes lead, the grid is on the last two axes, any axis between is one chunk."""
    *planes, row, col = index
    between = array.ndim - len(index)
    return (*planes, *(slice(None),) * between, row, slice(None) if whole_row else col)


def _missing_chunks(array: Any, flags: np.ndarray) -> np.ndarray:
    """True where a flagged subdomain (*planes, row, col) has no chunk of ``array`` in the store; one key listing."""
    from zarr.core.sync import sync

    async def listing() -> set[str]:
        return {key async for key in array.store_path.store.list_prefix(f"{array.store_path.path}/")}

    keys = sync(listing())
    between = (0,) * (array.ndim - flags.ndim)
    missing = np.zeros(flags.shape, dtype=bool)
    for index in zip(*np.nonzero(flags), strict=True):
        coords = (*index[:-2], *between, *index[-2:])
        missing[index] = f"{array.store_path.path}/{array.metadata.encode_chunk_key(coords)}" not in keys
    return missing


#: The arrays whose chunks resume decodes: the labels, and the bottlenecks it reads back into the run.
DECODED = ("labels/0", "_work/bottleneck")

#: Verification decodes a whole row of chunks at once when it is at most this many bytes, else chunk by chunk.
VERIFY_BLOCK_BYTES = 16 * 2**20


def _undecodable_chunks(array: Any, flags: np.ndarray) -> np.ndarray:
    """True where a flagged subdomain's chunk of ``array`` does not decode; a row of chunks at a time when the
    row is small (``VERIFY_BLOCK_BYTES``), else one chunk at a time, so memory stays bounded."""
    bad = np.zeros(flags.shape, dtype=bool)
    row_bytes = int(np.prod(array.chunks)) * array.dtype.itemsize * flags.shape[-1]
    for row in zip(*np.nonzero(flags.any(axis=-1)), strict=True):
        if row_bytes <= VERIFY_BLOCK_BYTES:
            try:
                array.blocks[_chunk(array, (*row, 0), whole_row=True)]
                continue
            except Exception:
                pass
        for col in np.nonzero(flags[row])[0]:
            index = (*(int(i) for i in row), int(col))
            try:
                array.blocks[_chunk(array, index)]
            except Exception:
                bad[index] = True
    return bad


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
