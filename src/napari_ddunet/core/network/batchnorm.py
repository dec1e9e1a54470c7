"""BatchNorm over a batch that is split across devices or processes.

The caller supplies ``all_sum``, a differentiable sum over every part of the batch (threads in
one process, or ranks of a process group); statistics then equal those of one BatchNorm over
the whole batch, and gradients flow through them as they would there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

AllSum = Callable[[torch.Tensor], torch.Tensor]


def global_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                      all_sum: AllSum) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised x, batch mean, unbiased batch variance) with whole-batch statistics.

    Two passes (mean, then the centred sum of squares) so the variance has no cancellation error.
    """
    shape = (1, -1, 1, 1)
    count = all_sum(torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device))
    if count.item() <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    mean = all_sum(x.sum(dim=(0, 2, 3))) / count
    centered = x - mean.view(shape)
    var = all_sum(centered.square().sum(dim=(0, 2, 3))) / count
    y = centered * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape) + bias.view(shape)
    return y, mean.detach(), (var * (count / (count - 1))).detach()


def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
    """Exactly what ``nn.BatchNorm2d`` does to its buffers after one training-mode forward."""
    if not bn.track_running_stats:
        return
    with torch.no_grad():
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean), alpha=factor)
        bn.running_var.mul_(1 - factor).add_(unbiased_var.to(bn.running_var), alpha=factor)
