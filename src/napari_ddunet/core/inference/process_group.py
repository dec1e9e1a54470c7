"""The one torchrun process-group setup shared by distributed inference and training.

Backend rule: nccl when every device of the rank is CUDA, else gloo (gloo runs on CPU
tensors, nccl only on GPU ones, so the rule follows where the collectives' tensors live).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def backend_for(devices: Sequence[torch.device]) -> str:
    """"nccl" when every device is CUDA, else "gloo"."""
    if devices and all(torch.device(d).type == "cuda" for d in devices):
        return "nccl"
    return "gloo"


def torchrun_world() -> int:
    """The world size torchrun describes in the environment (1 outside torchrun)."""
    if "RANK" not in os.environ:
        return 1
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_default_device() -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) when CUDA is present, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    return torch.device("cuda", local % torch.cuda.device_count())


def init_process_group(devices: Sequence[torch.device]) -> tuple[int, int]:
    """Join torchrun's process group with :func:`backend_for` ``devices``; (rank, world).

    On nccl the rank's current CUDA device becomes ``devices[0]``, where its collectives run.
    """
    if not dist.is_initialized():
        backend = backend_for(devices)
        if backend == "nccl":
            torch.cuda.set_device(devices[0])
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def destroy_process_group(together: bool = True) -> None:
    """Leave the process group; ``together`` (after a run that ended well) waits for every rank first, because
    a rank that exits while gloo still talks to it aborts the other. A rank that failed leaves at once: its
    peers may never reach a barrier."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
