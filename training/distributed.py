"""Subdomain-parallel training across processes (``torchrun``; backend by core/inference/process_group).

Every rank owns a contiguous run of subdomains in row-major order (whole grid rows when
the count per rank is a multiple of the grid's columns) of every image in the batch:

1. the encoder runs locally on the rank's subdomains;
2. the last F bottleneck channels are all-gathered with a collective whose backward pass
   sums the gradients of every rank (:class:`_AllGather`), the communication network runs,
   replicated, on the full mosaic, and each rank keeps its own slice;
3. the decoder runs locally; the dice sums are all-reduced (autograd-aware) *before* the
   ratio is formed, so every rank holds the exact single-process loss;
4. BatchNorm statistics are reduced over all ranks (:class:`SyncBatchNorm2d` on gloo,
   ``torch.nn.SyncBatchNorm`` on CUDA), and parameter gradients are averaged.

Why averaging is right: each rank back-propagates the same global loss L, and each
autograd collective sums the incoming gradients of all ranks, so rank r ends with
``world * dL/dtheta`` restricted to its own computations; their sum over ranks is
``world * dL/dtheta`` and the average is exactly the single-process gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from napari_ddunet.core.inference.process_group import init_process_group
from napari_ddunet.core.network.batchnorm import global_batch_norm, update_running_stats
from napari_ddunet.core.network.mosaic import Grid, from_subdomains, to_subdomains


class _AllReduce(torch.autograd.Function):
    """Sum over ranks; the backward pass sums the gradients of all ranks too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    """Concatenate equal-shaped tensors of all ranks along dim 0; backward returns this rank's
    slice of the gradient summed over ranks (all-reduce then slice: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.size = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.size
        return grad[start:start + ctx.size]


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Autograd-aware sum over all ranks."""
    return _AllReduce.apply(tensor)


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Autograd-aware concatenation over ranks along dim 0."""
    return _AllGather.apply(tensor)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all ranks (any backend).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``. The element count, the
    sum and the centred sum of squares are all-reduced with autograd, so gradients flow through
    the statistics exactly as in a single-process BatchNorm over the union of the batches.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        y, mean, unbiased_var = global_batch_norm(x, self.weight, self.bias, self.eps, all_reduce)
        update_running_stats(self, mean, unbiased_var)
        return y


def convert_batchnorm(module: nn.Module, skip: nn.Module | None = None) -> nn.Module:
    """Swap every BatchNorm2d (except inside ``skip``) for a synchronised one, in place.

    On CUDA (nccl) this is ``torch.nn.SyncBatchNorm``; elsewhere :class:`SyncBatchNorm2d`.
    """
    use_cuda = dist.is_initialized() and dist.get_backend() == "nccl"
    for name, child in module.named_children():
        if child is skip:
            continue
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            cls = nn.SyncBatchNorm if use_cuda else SyncBatchNorm2d
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.to(device=child.weight.device if child.affine else None,
                   dtype=child.weight.dtype if child.affine else None)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, skip)
    return module


class SubdomainParallel:
    """Runs a DDUNet with this rank's share of the subdomains (see the module docstring).

    The communication network sees the same full mosaic on every rank, so its BatchNorm
    layers already see global statistics and are left as they are.
    """

    def __init__(self, model: nn.Module, grid: Grid, devices: Sequence[torch.device]) -> None:
        self.rank, self.world = init_process_group(devices)
        self.model = model
        self.grid = grid
        tiles = grid[0] * grid[1]
        if tiles % self.world:
            raise ValueError(
                f"{tiles} subdomains per image do not split evenly over {self.world} ranks; "
                f"use a grid whose subdomain count is a multiple of the number of processes"
            )
        self.per_rank = tiles // self.world
        self.start = self.rank * self.per_rank
        convert_batchnorm(model, skip=model.comm if model.config.communicate else None)
        self.broadcast_parameters()

    def broadcast_parameters(self) -> None:
        """Start every rank from rank 0's weights and buffers."""
        for tensor in list(self.model.parameters()) + list(self.model.buffers()):
            dist.broadcast(tensor.data, src=0)

    def _mine(self, tiles: torch.Tensor) -> torch.Tensor:
        """This rank's subdomains out of a (B * R * C, ...) row-major batch."""
        n = self.grid[0] * self.grid[1]
        shaped = tiles.reshape(-1, n, *tiles.shape[1:])
        return shaped[:, self.start:self.start + self.per_rank].reshape(-1, *tiles.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full-image batch in, this rank's subdomain logits (B * per_rank, K, h, w) out."""
        model = self.model
        model.check_input(x, self.grid)
        features = model.encode(self._mine(to_subdomains(x, self.grid)))
        bottleneck = features[-1]
        if model.comm is not None:
            kept, sent = model.split_bottleneck(bottleneck)
            if model.config.communicate:
                f, h, w = sent.shape[1:]
                gathered = all_gather(sent.reshape(-1, self.per_rank, f, h, w))  # (world * B, per_rank, ...)
                batch = gathered.shape[0] // self.world
                mosaic = gathered.reshape(self.world, batch, self.per_rank, f, h, w).transpose(0, 1)
                mosaic = mosaic.reshape(batch * self.world * self.per_rank, f, h, w)
                received = self._mine(to_subdomains(model.comm(from_subdomains(mosaic, self.grid)), self.grid))
            else:
                received = model.comm(sent)
            features[-1] = torch.cat([kept, received], dim=1)
        return model.decode(features)

    def local_target(self, masks: torch.Tensor) -> torch.Tensor:
        """This rank's subdomains of a (B, H, W) label batch, as (B * per_rank, h, w)."""
        return self._mine(to_subdomains(masks[:, None], self.grid))[:, 0]

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce(tensor)

    def all_reduce_counts(self, matrix: np.ndarray) -> np.ndarray:
        counts = torch.from_numpy(np.ascontiguousarray(matrix, np.int64))
        dist.all_reduce(counts)
        return counts.numpy()

    def average_gradients(self) -> None:
        """DDP-style: average every parameter gradient over the ranks (one flat buffer)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        dist.barrier()
