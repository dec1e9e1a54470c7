"""A DDU-Net spread over several devices of one process, exact in outputs and gradients.

Usage::

    from napari_ddunet.core.network.parallel import DataParallelDDUNet, forward_multi_device

    logits = forward_multi_device(model, x, grid=(4, 4), devices=["cuda:0", "cuda:1"])
    # or, as a module whose parameters are the model's (for an optimizer):
    wrapped = DataParallelDDUNet(model, devices=["cuda:0", "cuda:1"], comm_device="cuda:0")
    loss = criterion(wrapped(x, grid=(4, 4)), target); loss.backward()   # grads land in model
    feats = wrapped.forward_features(x, grid=(4, 4))  # {"bottleneck", "communicated", "logits"}

How it works (paper 001, sec. III-C, in one process):

1. The image becomes the subdomain batch (row-major, :mod:`~napari_ddunet.core.network.mosaic`), which
   is split into contiguous chunks, one per device (devices may repeat; surplus devices idle).
2. Each chunk is encoded on its device, in its own thread. The parameters reach the device
   with a differentiable ``.to(device)`` and are used through ``torch.func.functional_call``
   on a structure-only replica, so gradients flow back into the one master copy.
3. The last F bottleneck channels of all chunks are gathered on ``comm_device``, stitched into
   the mosaic (C=Y) or kept as a batch (C=N), passed through the communication network there,
   and scattered back.
4. Each chunk is decoded on its device; the logits are gathered on ``output_device``
   (default: the input's device).

BatchNorm in training mode is synchronised over the chunks: every BatchNorm computes its
per-chunk sum, all chunks add them (differentiably, in rank order), the same for the sum of
squared deviations, and all normalise with the statistics of the whole subdomain batch. The
running statistics are updated once, on the master module, exactly as one BatchNorm over the
whole batch would. So training and eval outputs and all gradients equal the single-device run
(tests: float64, several ``"cpu"`` entries standing in for GPUs, 1e-10).

Not equal: dropout masks (each thread draws from the shared generator in its own order), so
train with dropout gives a different but equally distributed sample. Grad mode, inference mode
and autocast of the caller are carried into the worker threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from napari_ddunet.core.errors import DeviceError
from napari_ddunet.core.network.batchnorm import global_batch_norm, update_running_stats
from napari_ddunet.core.network.config import ModelConfig
from napari_ddunet.core.network.model import DDUNet
from napari_ddunet.core.network.mosaic import Grid, from_subdomains, to_subdomains

Device = str | torch.device


class _ChunkGroup:
    """All-reduce (sum) across the worker threads of one forward pass."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list[Any] = [None] * size

    def all_sum(self, rank: int, value: Any) -> Any:
        """Sum of every chunk's ``value``, on this chunk's device; differentiable for tensors."""
        if self.size == 1:
            return value
        self.slots[rank] = value
        self.barrier.wait()
        parts = list(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before everyone has read them all
        if isinstance(value, torch.Tensor):
            parts = [p.to(value.device) for p in parts]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total


class _SyncBatchNorm(nn.Module):
    """Stand-in for one master BatchNorm2d in a replica: whole-batch statistics across chunks.

    Its weight and bias are placeholders that ``functional_call`` replaces with the master's
    (moved to the chunk's device); running statistics are read from and written to the master.
    """

    def __init__(self, master: nn.BatchNorm2d, group: _ChunkGroup, rank: int) -> None:
        super().__init__()
        object.__setattr__(self, "master", master)  # a reference, not a submodule
        self.group = group
        self.rank = rank
        if master.affine:
            self.weight = nn.Parameter(torch.empty(master.num_features, device="meta"))
            self.bias = nn.Parameter(torch.empty(master.num_features, device="meta"))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m: nn.BatchNorm2d = self.master
        if not m.training and m.track_running_stats:
            return F.batch_norm(x, m.running_mean.to(x.device), m.running_var.to(x.device),
                                self.weight, self.bias, False, 0.0, m.eps)
        y, mean, unbiased_var = global_batch_norm(x, self.weight, self.bias, m.eps,
                                                  functools.partial(self.group.all_sum, self.rank))
        if m.training and self.rank == 0:
            update_running_stats(m, mean, unbiased_var)
        return y


def _replica(model: DDUNet, group: _ChunkGroup, rank: int) -> DDUNet:
    """Structure-only copy (meta tensors) with synchronised BatchNorms and the master's mode flags."""
    with torch.device("meta"):
        replica = DDUNet(model.config)
    masters = dict(model.named_modules())
    for name, module in list(replica.named_modules()):
        master = masters[name]
        module.training = master.training
        if isinstance(module, nn.BatchNorm2d):
            parent_name, _, child = name.rpartition(".")
            parent = replica.get_submodule(parent_name) if parent_name else replica
            setattr(parent, child, _SyncBatchNorm(master, group, rank))
    return replica


def _state_on(model: DDUNet, device: torch.device, prefix: str) -> dict[str, torch.Tensor]:
    """The master's parameters under ``prefix``, moved differentiably to ``device``, keys relative."""
    return {name[len(prefix):]: p.to(device) for name, p in model.named_parameters() if name.startswith(prefix)}


def _run_chunks(fn: Callable[[int], Any], devices: list[torch.device], group: _ChunkGroup) -> list[Any]:
    """``fn(rank)`` for every chunk, each in its own thread with the caller's autograd/autocast state."""
    n = len(devices)
    if n == 1:
        return [fn(0)]
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    autocast = {t: (torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in ("cpu", "cuda")}

    def work(rank: int) -> None:
        try:
            with (
                torch.inference_mode(inference),
                torch.set_grad_enabled(grad),
                torch.autocast("cpu", enabled=autocast["cpu"][0], dtype=autocast["cpu"][1]),
                torch.autocast("cuda", enabled=autocast["cuda"][0], dtype=autocast["cuda"][1]),
            ):
                if devices[rank].type == "cuda":
                    with torch.cuda.device(devices[rank]):
                        results[rank] = fn(rank)
                else:
                    results[rank] = fn(rank)
        except BaseException as error:  # re-raised in the caller's thread below
            errors[rank] = error
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,), name=f"ddunet-chunk-{rank}") for rank in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if real or any(errors):
        raise (real or [e for e in errors if e is not None])[0]
    return results


def forward_multi_device(
    model: DDUNet,
    x: torch.Tensor,
    grid: Grid,
    devices: Sequence[Device],
    comm_device: Device | None = None,
    output_device: Device | None = None,
    return_features: bool = False,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """``model(x, grid)`` (or ``model.forward_features`` with ``return_features``) over ``devices``.

    ``comm_device`` runs the communication network (default: the first device);
    ``output_device`` receives the result (default: ``x.device``).
    """
    if not devices:
        raise DeviceError("give at least one device")
    try:
        device_list = [torch.device(d) for d in devices]
        comm = torch.device(comm_device) if comm_device is not None else device_list[0]
        out_device = torch.device(output_device) if output_device is not None else x.device
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"bad device in {list(devices)}: {error}") from None
    model.check_input(x, grid)
    tiles = to_subdomains(x, grid)
    chunks = [c for c in torch.tensor_split(tiles, len(device_list)) if c.shape[0] > 0]
    device_list = device_list[: len(chunks)]
    group = _ChunkGroup(len(chunks))
    replicas = [_replica(model, group, rank) for rank in range(len(chunks))]
    encoder_state = {d: _state_on(model, d, "encoder.") for d in set(device_list)}
    decoder_state = {d: _state_on(model, d, "decoder.") for d in set(device_list)}

    def encode(rank: int) -> list[torch.Tensor]:
        d = device_list[rank]
        return functional_call(replicas[rank].encoder, encoder_state[d], (chunks[rank].to(d),))

    features = _run_chunks(encode, device_list, group)
    before = [f[-1] for f in features]
    after = before
    f = model.config.comm_features
    if model.comm is not None:
        comm_replica = _replica(model, _ChunkGroup(1), 0).comm
        sent = torch.cat([b[:, b.shape[1] - f:].to(comm) for b in before])
        comm_state = _state_on(model, comm, "comm.")
        if model.config.communicate:
            received = to_subdomains(functional_call(comm_replica, comm_state, (from_subdomains(sent, grid),)), grid)
        else:
            received = functional_call(comm_replica, comm_state, (sent,))
        parts = torch.split(received, [b.shape[0] for b in before])
        after = [torch.cat([b[:, : b.shape[1] - f], p.to(b.device)], dim=1) for b, p in zip(before, parts, strict=True)]

    def decode(rank: int) -> torch.Tensor:
        d = device_list[rank]
        return functional_call(replicas[rank].decoder, decoder_state[d], ([*features[rank][:-1], after[rank]],))

    logits = from_subdomains(torch.cat([t.to(out_device) for t in _run_chunks(decode, device_list, group)]), grid)
    if not return_features:
        return logits

    def mosaic(parts: list[torch.Tensor]) -> torch.Tensor:
        return from_subdomains(torch.cat([p[:, p.shape[1] - f:].to(out_device) for p in parts]), grid)

    return {"bottleneck": mosaic(before), "communicated": mosaic(after), "logits": logits}


class DataParallelDDUNet(nn.Module):
    """``model`` run by :func:`forward_multi_device`; its parameters are the model's own.

    Save ``wrapped.module`` (not the wrapper) with :func:`~napari_ddunet.save_checkpoint`.
    """

    def __init__(
        self,
        model: DDUNet,
        devices: Sequence[Device],
        comm_device: Device | None = None,
        output_device: Device | None = None,
    ) -> None:
        super().__init__()
        if not devices:
            raise DeviceError("give at least one device")
        self.module = model
        self.devices = list(devices)
        self.comm_device = comm_device
        self.output_device = output_device

    @property
    def config(self) -> ModelConfig:
        return self.module.config

    def forward(self, x: torch.Tensor, grid: Grid = (1, 1)) -> torch.Tensor:
        return forward_multi_device(self.module, x, grid, self.devices, self.comm_device, self.output_device)

    def forward_features(self, x: torch.Tensor, grid: Grid = (1, 1)) -> dict[str, torch.Tensor]:
        return forward_multi_device(
            self.module, x, grid, self.devices, self.comm_device, self.output_device, return_features=True
        )
