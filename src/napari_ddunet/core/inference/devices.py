"""Device discovery and the one device-spec parser ("cpu", "cuda", "cuda:1", "mps", "auto"), checked
before any work, and one worker thread per device that pulls jobs from one shared queue (a slow device
never holds the others back)."""

from __future__ import annotations

import copy
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_ddunet.core.errors import DeviceError

#: dtypes whose convolutions run faster channels_last (oneDNN on CPU, cuDNN on CUDA); float64 has no fast path.
CHANNELS_LAST_DTYPES = (torch.float16, torch.float32, torch.bfloat16)


def to_device(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (n, C, h, w) host batch on ``device`` in ``dtype``, channels_last where that is the fast layout."""
    x = torch.from_numpy(array).to(device=device, dtype=dtype)
    if dtype in CHANNELS_LAST_DTYPES and device.type in ("cuda", "cpu") and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[tuple[str, str]]:
    """(human label, device string) for the CPU, every CUDA GPU (name and memory) and MPS: choices for a menu."""
    devices = [("CPU", "cpu")]
    for i in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(i)
        gib = properties.total_memory / 2**30
        devices.append((f"cuda:{i} ({properties.name}, {gib:.0f} GiB)", f"cuda:{i}"))
    if _mps_available():
        devices.append(("Apple GPU (mps)", "mps"))
    return devices


def resolve_devices(devices: str | Sequence[str | torch.device] | None) -> list[torch.device]:
    """Turn a device spec into torch devices, or raise :class:`DeviceError` naming what is available."""
    if devices is None:
        devices = ("cpu",)
    if isinstance(devices, str | torch.device):
        devices = [devices]
    if not devices:
        raise DeviceError("no device given; use e.g. 'cpu', 'cuda', 'cuda:0', 'mps' or 'auto'")
    available = [value for _, value in available_devices()]
    result: list[torch.device] = []
    for spec in devices:
        text = str(spec).strip().lower()
        if text == "auto":
            if torch.cuda.is_available():
                result += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
            elif _mps_available():
                result.append(torch.device("mps"))
            else:
                result.append(torch.device("cpu"))
            continue
        try:
            device = torch.device(text)
        except RuntimeError:
            raise DeviceError(
                f"unknown device {spec!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' (available: "
                f"{', '.join(available)})"
            ) from None
        if device.type == "cpu":
            result.append(torch.device("cpu"))
        elif device.type == "cuda":
            index = 0 if device.index is None else device.index
            if not torch.cuda.is_available():
                raise DeviceError(f"device {spec!r} is not available: no CUDA GPU here (available: "
                                  f"{', '.join(available)})")
            if index >= torch.cuda.device_count():
                raise DeviceError(f"device {spec!r} is not available: this machine has "
                                  f"{torch.cuda.device_count()} CUDA GPU(s) (available: {', '.join(available)})")
            result.append(torch.device("cuda", index))
        elif device.type == "mps":
            if not _mps_available():
                raise DeviceError(f"device {spec!r} is not available: no Apple MPS backend here (available: "
                                  f"{', '.join(available)})")
            result.append(torch.device("mps"))
        else:
            raise DeviceError(f"unsupported device {spec!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
    return result


class DeviceWorkers:
    """One thread per device, each with its own model replica, pulling jobs from one queue.

    A job is ``fn(replica, device) -> result``; :meth:`submit` returns a Future. Several "cpu"
    entries are allowed (each gets its share of the CPU threads).
    """

    def __init__(self, model: nn.Module, devices: Sequence[torch.device], dtype: torch.dtype) -> None:
        self.devices = list(devices)
        self.replicas = [copy.deepcopy(model).to(device=d, dtype=dtype).eval() for d in self.devices]
        for replica, device in zip(self.replicas, self.devices, strict=True):
            if dtype in CHANNELS_LAST_DTYPES and device.type in ("cuda", "cpu"):
                replica.to(memory_format=torch.channels_last)
        self._queue: queue.Queue = queue.Queue()
        cpu_workers = sum(d.type == "cpu" for d in self.devices)
        self._threads_before = torch.get_num_threads()
        if cpu_workers > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // cpu_workers))
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True, name=f"ddunet-{d}")
                         for i, d in enumerate(self.devices)]
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int) -> None:
        replica, device = self.replicas[index], self.devices[index]
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with torch.inference_mode():
                    future.set_result(fn(replica, device))
            except BaseException as error:  # handed to the waiting thread, which re-raises it
                future.set_exception(error)
            del fn, item

    def submit(self, fn: Callable[[nn.Module, torch.device], Any]) -> Future:
        future: Future = Future()
        self._queue.put((fn, future))
        return future

    def close(self) -> None:
        """Cancel jobs not yet started, let running ones finish, stop the threads."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        torch.set_num_threads(self._threads_before)
