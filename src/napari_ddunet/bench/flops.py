"""Floating-point work of a DDU-Net, counted layer by layer from its module graph.

Every convolution is counted analytically: a Conv2d does ``2 * kh * kw * Cin/groups * Cout``
multiply-adds per output pixel, a ConvTranspose2d ``2 * kh * kw * Cin * Cout/groups`` per
*input* pixel (each input pixel scatters one kernel into the output). The spatial size each
layer sees comes from propagating shapes on the ``meta`` device, so nothing is computed and
any subdomain size or grid can be counted instantly. BatchNorm (eval), ReLU, max-pooling and
concatenation are elementwise; they are counted apart because they run at memory speed, not
at matrix speed, and only the convolution part enters the roofline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from napari_ddunet.core.network.model import DDUNet


@dataclass(frozen=True)
class FlopCount:
    """Work of one forward pass over ``pixels`` image pixels."""

    conv_flops: int          # convolution / transposed-convolution multiply-adds x 2
    elementwise_ops: int     # BN (2 per value), ReLU, max-pool (3 compares per output), bias adds
    pixels: int

    @property
    def conv_flops_per_pixel(self) -> float:
        return self.conv_flops / self.pixels

    @property
    def elementwise_per_pixel(self) -> float:
        return self.elementwise_ops / self.pixels


def _conv_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        c_in, c_out_per_group, kh, kw = module.weight.shape
        in_pixels = inp.shape[0] * inp.shape[2] * inp.shape[3]
        return 2 * kh * kw * c_in * c_out_per_group * in_pixels
    c_out, c_in_per_group, kh, kw = module.weight.shape
    out_pixels = out.shape[0] * out.shape[2] * out.shape[3]
    return 2 * kh * kw * c_in_per_group * c_out * out_pixels


def _elementwise(module: nn.Module, out: torch.Tensor) -> int:
    values = out.numel()
    if isinstance(module, nn.BatchNorm2d):
        return 2 * values            # eval-mode BN is one scale and one shift per value
    if isinstance(module, nn.ReLU):
        return values
    if isinstance(module, nn.MaxPool2d):
        return 3 * values            # 2x2 window: three comparisons per output value
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.bias is not None:
        return values
    return 0


def count_flops(model: DDUNet, subdomain_size: tuple[int, int], grid: tuple[int, int] = (1, 1)) -> FlopCount:
    """Count the work of ``model`` on a ``grid`` of ``subdomain_size`` subdomains (batch 1)."""
    meta = copy.deepcopy(model).to("meta").eval()
    totals = {"conv": 0, "elementwise": 0}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            totals["conv"] += _conv_flops(module, inputs[0], output)
        totals["elementwise"] += _elementwise(module, output)

    handles = [m.register_forward_hook(hook) for m in meta.modules() if not list(m.children())]
    h, w = subdomain_size
    rows, cols = grid
    x = torch.empty(1, model.config.in_channels, rows * h, cols * w, device="meta")
    try:
        with torch.inference_mode():
            meta(x, grid=grid)
    finally:
        for handle in handles:
            handle.remove()
    return FlopCount(totals["conv"], totals["elementwise"], rows * h * cols * w)
