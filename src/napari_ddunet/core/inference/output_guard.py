"""Where a run may write, and the exclusive lock it holds on its output store while it writes.

Three rules keep a run from destroying data it does not own (docs/engine.md, "Guarantees"):

- an output may neither be, contain, nor lie inside anything the run reads: every file and folder an
  input array lives in, and the whole zarr hierarchy around it, compared by file identity (device and
  inode), so that symlinks, ``x/../x``, case-insensitive names and bind mounts cannot spell around it;
- an output may not lie inside any zarr store, and ``overwrite`` replaces only a previous napari-ddunet
  output store holding nothing but its own entries;
- creating, resuming and overwriting a store hold an exclusive OS lock (``flock`` on a file beside the
  store, released by the kernel when the process dies); the old store is deleted only under that lock,
  after the whole request has been validated, right before the new one is created.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from napari_ddunet.core.errors import RunIOError
from napari_ddunet.core.inference.sink import OutputError
from napari_ddunet.core.io.images import InputReadError

#: The entries of a napari-ddunet output store; an overwrite refuses a store holding anything else.
OWN_ENTRIES = frozenset({"zarr.json", "labels", "probabilities", "logits", "bottleneck", "communicated", "_work"})

#: Files that make a folder a zarr node (v3, and v2 groups/arrays).
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")

LOCK_SUFFIX = ".napari-ddunet.lock"


class OutputInUse(OutputError):
    """Another run holds the output store's lock."""


# -- what the run reads --------------------------------------------------------------------------


def read_locations(image: Any, *arrays: Any) -> tuple[Path, ...]:
    """Every file and folder the run reads: the input path, the place on disk of ``image`` and of each of
    ``arrays`` (the arrays the image source opened), and the outermost zarr hierarchy each lies in (a
    sibling array in the same store is the user's too)."""
    places: list[Path] = [Path(image)] if isinstance(image, str | Path) else []
    for array in (image, *arrays):
        places.extend(_array_places(array))
    found: dict[str, Path] = {}
    for place in places:
        for where in (place, _hierarchy_root(place)):
            if where is not None:
                found.setdefault(str(where.resolve()), where)
    return tuple(found.values())


def _array_places(array: Any, depth: int = 0) -> list[Path]:
    """On-disk places of a zarr array or group, a numpy memmap (or a view of one), or the arrays a dask
    array was built from; an array in memory has none."""
    import zarr

    if array is None or depth > 8:
        return []
    if isinstance(array, zarr.Array | zarr.Group):
        root = getattr(array.store, "root", None)
        return [Path(root) / array.path] if root is not None else []
    if isinstance(array, np.ndarray):
        while array is not None and not isinstance(array, np.memmap):
            array = array.base if isinstance(array.base, np.ndarray) else None
        return [Path(array.filename)] if array is not None and array.filename else []
    graph = getattr(array, "__dask_graph__", None)
    if graph is None:
        return []
    places = []
    for name, layer in getattr(graph(), "layers", {}).items():
        # dask keeps the arrays it wraps under "original-*" keys; other layers are tasks, not read here
        if isinstance(name, str) and name.startswith("original-") and name in layer:
            places.extend(_array_places(layer[name], depth + 1))
    return places


def _is_zarr_node(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in ZARR_MARKERS)


def _hierarchy_root(place: Path) -> Path | None:
    """The outermost folder of the zarr hierarchy ``place`` belongs to (None outside any)."""
    place = place.resolve()
    top = place if place.is_dir() and _is_zarr_node(place) else None
    for parent in place.parents:
        if not _is_zarr_node(parent):
            break
        top = parent
    return top


# -- where the run may write ---------------------------------------------------------------------


def _identity(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _chain(path: Path) -> list[tuple[int, int]]:
    """Identities of ``path`` (when it exists) and of every folder above it."""
    resolved = path.resolve()
    return [_identity(p) for p in (resolved, *resolved.parents) if p.exists()]


def check_output(output: str | Path, *, overwrite: bool, resume: bool, reads: Iterable[Path] = (),
                 probe: bool = True) -> Path:
    """Refuse an output that is in use, that would touch what the run reads or what it did not create, or
    that cannot be written; touches nothing. ``reads`` are :func:`read_locations`. ``probe=False`` leaves
    "in use" to :func:`claim_output` (ranks under torchrun, which must all decide alike)."""
    path = Path(output)
    holder = _holder(path) if probe else None
    if holder is not None:
        raise OutputInUse(f"output {path} is in use by another napari-ddunet run ({holder}); wait for it to end "
                          "or choose another output")
    check_location(path, overwrite=overwrite, resume=resume, reads=reads)
    return path


def check_location(path: Path, *, overwrite: bool, resume: bool, reads: Iterable[Path] = ()) -> None:
    """The location rules of :func:`check_output`, without the lock (a lock holder re-checks with this)."""
    if path.is_symlink():
        target = os.readlink(path)
        if not path.exists():
            raise OutputError(f"output {path} is a dangling symbolic link (to {target}); remove it or choose "
                              "another output")
        raise OutputError(f"output {path} is a symbolic link (to {target}); give the store's own path")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"output folder {parent} does not exist")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"output location {parent} is not writable")
    _refuse_reads(path, reads)
    for folder in path.resolve().parents:
        if _is_zarr_node(folder):
            raise OutputError(f"output {path} lies inside the zarr store {folder}; choose an output outside it")
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"output {path} is a file, not a zarr store; refusing to replace it")
    if not (overwrite or resume):
        raise OutputError(f"output {path} exists; pass overwrite=True (--overwrite) or resume=True (--resume)")
    entries = set(os.listdir(path))
    if entries and "zarr.json" not in entries:
        raise OutputError(f"output {path} exists and is not a zarr store; refusing to replace it")
    if entries and overwrite:
        if not _is_own_store(path):
            raise OutputError(f"output {path} is a zarr store that napari-ddunet did not write; refusing to "
                              "replace it")
        foreign = sorted(entries - OWN_ENTRIES)
        if foreign:
            raise OutputError(f"output {path} holds {foreign[0]!r}, which napari-ddunet did not write; refusing "
                              "to replace it")
    if not os.access(path, os.W_OK):
        raise OutputError(f"output {path} is not writable")


def _refuse_reads(path: Path, reads: Iterable[Path]) -> None:
    """An output that is, contains or lies inside a place the run reads."""
    chain = _chain(path)
    mine = _identity(path) if path.exists() else None
    for where in reads:
        if not where.exists():
            continue
        if mine is not None and mine in _chain(where):
            raise OutputError(f"output {path} is (or contains) the input {where}; choose another output")
        if _identity(where) in chain:
            raise OutputError(f"output {path} lies inside {where}, which this run reads; choose an output "
                              "outside it")


def _is_own_store(path: Path) -> bool:
    """True for a zarr group whose attributes say napari-ddunet wrote it."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes", {}).get("napari_ddunet"), dict)


# -- the lock ------------------------------------------------------------------------------------


def lock_file(path: Path) -> Path:
    """The lock of output ``path``: a hidden file beside the store (so that replacing the store keeps it)."""
    resolved = path.resolve()
    return resolved.parent / f".{resolved.name}{LOCK_SUFFIX}"


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking OS lock on ``fd``; False when another open file holds it."""
    try:
        import fcntl
    except ImportError:   # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _retry_lock(fd: int) -> bool:
    """A second chance for a lock held by another run's :func:`_holder` probe, which lets go within ms;
    a run holds it for its whole length."""
    for _ in range(5):
        time.sleep(0.02)
        if _try_lock(fd):
            return True
    return False


def _holder(path: Path) -> str | None:
    """Who holds the lock of ``path`` (its process id and host), or None when nobody does (or we cannot tell:
    then taking the lock decides)."""
    try:
        fd = os.open(lock_file(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            return None
        return os.read(fd, 200).decode(errors="replace").strip() or "a run that is starting"
    except OSError:
        return None
    finally:
        os.close(fd)


class OutputLock:
    """The exclusive lock of one output store, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: Path, fd: int, where: Path) -> None:
        self.path, self._fd, self._where = path, fd, where

    @classmethod
    def acquire(cls, path: Path) -> OutputLock:
        """Lock ``path`` or raise :class:`OutputInUse`; never waits for a run (only, a few ms, for a probe)."""
        where = lock_file(path)
        attempts = 0
        while True:
            try:
                fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
                locked = _try_lock(fd) or _retry_lock(fd)
            except OSError as error:
                raise OutputError(f"cannot lock output {path}: {error.strerror or error} ({where})") from None
            if not locked:
                os.close(fd)
                raise OutputInUse(f"output {path} is in use by another napari-ddunet run "
                                  f"({_holder(path) or 'that just ended'}); wait for it to end or choose another "
                                  "output")
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(where))
            except FileNotFoundError:
                same = False
            if same:   # not a file its last holder removed between our open and our lock
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
                return cls(path, fd, where)
            os.close(fd)
            attempts += 1
            if attempts > 100:
                raise OutputInUse(f"output {path} is being claimed by other runs over and over; try again")

    def release(self) -> None:
        """Remove the lock file, then let the lock go (a waiter that opened the old file sees it is gone)."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):   # gone already, or (Windows) still open
            os.unlink(self._where)
        os.close(self._fd)
        self._fd = -1


def _take(path: Path, *, overwrite: bool, resume: bool, reads: Iterable[Path]) -> OutputLock:
    """Lock the output, re-check it under the lock, and clear a previous napari-ddunet store to overwrite."""
    lock = OutputLock.acquire(path)
    try:
        check_location(path, overwrite=overwrite, resume=resume, reads=reads)
        if overwrite and path.exists() and any(path.iterdir()):
            shutil.rmtree(path)
    except BaseException:
        lock.release()
        raise
    return lock


@contextmanager
def claim_output(request: Any) -> Iterator[None]:
    """Hold the lock of ``request``'s output store for the ``with`` block (rank 0 for all ranks under
    torchrun: it alone creates the store, the others attach to it and never wait on each other). An OSError
    in the block, or an unreadable input once the store exists, becomes a
    :class:`~napari_ddunet.core.errors.RunIOError` (exit 3) naming resume."""
    policy = request.output
    if policy.path is None:
        yield
        return
    lock: OutputLock | None = None
    error: Exception | None = None
    if request.world > 1:   # every rank has validated the request before rank 0 locks (and clears) the store
        request.distributed.barrier()
    if request.world == 1 or request.distributed.rank == 0:
        try:
            lock = _take(policy.path, overwrite=policy.overwrite, resume=policy.resume, reads=policy.reads)
        except Exception as failure:   # the other ranks must learn of any failure, or they wait forever
            error = failure
    if request.world > 1 and request.distributed.any(error is not None):
        error = error or OutputError(f"rank 0 could not claim the output {policy.path}; see its message")
    if error is not None:
        raise error
    try:
        yield
    except (OSError, InputReadError) as fault:   # a full disk, a file too large, an input chunk that fails
        stored = policy.path.exists()
        if isinstance(fault, InputReadError) and not stored:
            raise   # bad input found before anything was written
        what = str(fault) if isinstance(fault, InputReadError) else (
            f"I/O error: {fault.strerror or fault}" + (f" ({fault.filename})" if fault.filename else ""))
        if not stored:
            raise RunIOError(what) from fault
        raise RunIOError(f"{what}; {policy.path} is resumable: fix the cause, then rerun with --resume "
                         "(resume=True)") from fault
    finally:
        if lock is not None:
            lock.release()
