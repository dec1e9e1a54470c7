"""Dice loss of paper 001 Eq. (1), written as sums so that distributed ranks can reduce them first.

The loss is a ratio of sums over every pixel of the batch. Splitting the batch (or the
subdomains) across processes must not change it, so the per-rank code computes
:func:`dice_sums`, the sums are all-reduced, and only then :func:`dice_from_sums` forms
the ratio: the 2-rank loss and gradient equal the single-process ones.

``ignore_index`` (``--ignore-index``, sparse masks): pixels with that label are left out of every
sum, so they give neither loss nor gradient. It may lie outside 0..K-1 (e.g. 255).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_FORMS = ("per-class", "eq1")
EPSILON = 1e-7  # thesis sec. 7.1: smoothing constant of the dice loss


def dice_sums(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """(2, K) tensor: per-class sum of y*p and per-class sum of y + p over all (not ignored) pixels.

    ``logits`` (N, K, H, W), ``target`` (N, H, W) integer labels; p = softmax(logits).
    """
    probs = torch.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)
    target = target.long()
    if ignore_index is not None:
        valid = target != ignore_index
        probs = probs * valid.unsqueeze(1).to(probs.dtype)
        target = torch.where(valid, target, torch.zeros_like(target))
        onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        onehot = onehot * valid.unsqueeze(1).to(probs.dtype)
    else:
        onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return torch.stack([inter, total])


def dice_from_sums(sums: torch.Tensor, form: str = "per-class", eps: float = EPSILON) -> torch.Tensor:
    """The dice loss from (possibly all-reduced) :func:`dice_sums`.

    ``eq1``: Eq. (1) literally, 1 - 2 (sum_k sum_p y p + eps) / (sum_k sum_p (y + p) + eps). With a
    softmax the denominator is the constant 2P, so this form weighs classes by their pixel count.
    ``per-class``: the same ratio per class, averaged over classes, so a thin rare class (the
    synthetic line) weighs as much as the background; the imbalance-aware reading of Eq. (1).
    """
    inter, total = sums[0], sums[1]
    if form == "eq1":
        return 1.0 - 2.0 * (inter.sum() + eps) / (total.sum() + eps)
    if form == "per-class":
        return 1.0 - (2.0 * (inter + eps) / (total + eps)).mean()
    raise ValueError(f"unknown dice form {form!r}; use one of {DICE_FORMS}")


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, form: str = "per-class", eps: float = EPSILON,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Dice loss of a whole batch (sums over all its pixels before the ratio)."""
    return dice_from_sums(dice_sums(logits, target, ignore_index), form, eps)


def cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Summed (not averaged) pixel cross entropy; divide by the global count of (not ignored) pixels."""
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                           target.long(), reduction="sum", ignore_index=-100 if ignore_index is None else ignore_index)


def pixel_count(target: torch.Tensor, ignore_index: int | None = None) -> int:
    """How many pixels of ``target`` count in the loss (all of them without ``ignore_index``)."""
    return target.numel() if ignore_index is None else int((target != ignore_index).sum())
