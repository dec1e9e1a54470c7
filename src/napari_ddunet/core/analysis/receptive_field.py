"""Receptive fields and halos of the U-Net, DDU-Net and ResNet-18 variants.

Three views of the same quantity, which tests hold equal:

* **exact analytic support**: the network is walked layer by layer (conv, max-pool and
  transposed conv; BatchNorm, ReLU and dropout are pointwise and do not widen anything) and
  every layer maps an interval of its output positions back to the interval of input
  positions it reads. Skip connections and residual blocks take the hull of their branches.
  The support of an output pixel depends on its position modulo ``2**depth``: pooling
  windows and transposed-conv pairs are aligned to the grid, so :class:`ReceptiveField`
  reports the extents for every residue.
* **measured support**: :func:`measured_receptive_field` differentiates one output pixel
  of a float64 copy of the model with autograd and reads off where the gradient is non-zero.
* **paper 004's radius** (Majurski and Bajcsy, Eq. 1): sum over the convolutions on the
  longest path of ``jump * floor(k / 2)``, which ignores pooling windows.

The communication network is treated as on one infinitely large subdomain (paper 001,
Table IV): it sits at the bottleneck and widens the field by its halo times ``2**depth``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from napari_ddunet.core.network.config import ModelConfig
from napari_ddunet.core.network.model import DDUNet
from napari_ddunet.core.network.resnet import BasicBlock

Interval = tuple[int, int]
BackMap = Callable[[int, int], Interval]


# -- the network as a tree of sequences and branches of primitive layers ---------------------


@dataclass(frozen=True)
class Layer:
    """One spatial operation along one axis (all kernels here are square)."""

    name: str
    kind: str  # "conv" | "pool" | "convT"
    kernel: int
    stride: int
    padding: int
    dilation: int

    def back(self, lo: int, hi: int) -> Interval:
        """Input positions read by output positions ``lo..hi`` (exact, no clipping)."""
        k, s, p, d = self.kernel, self.stride, self.padding, self.dilation
        if self.kind != "convT":
            return s * lo - p, s * hi - p + d * (k - 1)
        # transposed conv: output y = s * x - p + d * i for input x and tap i
        def reads(y: int) -> list[int]:
            return [(y + p - d * i) // s for i in range(k) if (y + p - d * i) % s == 0]

        first = min(x for y in range(lo, min(hi, lo + s - 1) + 1) for x in reads(y))
        last = max(x for y in range(max(lo, hi - s + 1), hi + 1) for x in reads(y))
        return first, last

    def jump_factor(self) -> Fraction:
        return Fraction(1, self.stride) if self.kind == "convT" else Fraction(self.stride)


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Branches:
    """Parallel paths from one input whose outputs are added or concatenated."""

    items: tuple[Node, ...]


Node = Layer | Seq | Branches
IDENTITY = Seq(())


def _pair(value: int | tuple[int, ...], what: str, name: str) -> int:
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"{name}: receptive field analysis needs a square {what}, got {value}")
        return int(value[0])
    return int(value)


def _node(module: nn.Module, name: str) -> Node:
    """Turn a module into a tree of layers; pointwise modules become the identity."""
    if isinstance(module, BasicBlock):
        main = Seq((_node(module.conv1, f"{name}.conv1"), _node(module.conv2, f"{name}.conv2")))
        shortcut = IDENTITY if module.downsample is None else _node(module.downsample, f"{name}.downsample")
        return Branches((main, shortcut))
    if isinstance(module, nn.Conv2d | nn.MaxPool2d | nn.ConvTranspose2d):
        kind = "conv"
        if isinstance(module, nn.MaxPool2d):
            kind = "pool"
        elif isinstance(module, nn.ConvTranspose2d):
            kind = "convT"
        if isinstance(module.padding, str):
            raise ValueError(f"{name}: string padding {module.padding!r} is not supported")
        return Layer(
            name,
            kind,
            _pair(module.kernel_size, "kernel", name),
            _pair(module.stride, "stride", name),
            _pair(module.padding, "padding", name),
            _pair(module.dilation, "dilation", name),
        )
    children = list(module.named_children())
    if children:
        return Seq(tuple(_node(child, f"{name}.{key}") for key, child in children))
    return IDENTITY


def network_tree(model: DDUNet, with_comm: bool = True) -> Node:
    """The DDU-Net as nested sequences and branches, the comm network on one infinite subdomain."""
    comm = _node(model.comm, "comm") if with_comm and model.comm is not None else IDENTITY
    if model.config.encoder == "resnet18":
        enc, dec = model.encoder, model.decoder
        level3 = Seq((_node(enc.layer3, "encoder.layer3"), _node(enc.bottleneck, "encoder.bottleneck"), comm,
                      _node(dec.up1.up, "decoder.up1.up")))
        level2 = Seq((_node(enc.layer2, "encoder.layer2"), Branches((level3, IDENTITY)),
                      _node(dec.up1.conv, "decoder.up1.conv"), _node(dec.up2.up, "decoder.up2.up")))
        level1 = Seq((_node(enc.maxpool, "encoder.maxpool"), _node(enc.layer1, "encoder.layer1"),
                      Branches((level2, IDENTITY)), _node(dec.up2.conv, "decoder.up2.conv"),
                      _node(dec.up3.up, "decoder.up3.up")))
        return Seq((_node(enc.conv1, "encoder.conv1"), Branches((level1, IDENTITY)),
                    _node(dec.up3.conv, "decoder.up3.conv"), _node(dec.up4, "decoder.up4"),
                    _node(dec.conv, "decoder.conv"), _node(dec.outc, "decoder.outc")))
    depth = model.config.depth
    downs, ups = model.encoder.downs, model.decoder.ups
    # inner: from the encoder feature of level `level` to the decoder output of that level
    inner: Node = Seq((_node(downs[depth - 1], f"encoder.downs.{depth - 1}"), comm,
                       _node(ups[0].up, "decoder.ups.0.up")))
    for level in reversed(range(depth)):
        j = depth - 1 - level
        inner = Seq((Branches((inner, IDENTITY)), _node(ups[j].conv, f"decoder.ups.{j}.conv")))
        if level > 0:
            inner = Seq((_node(downs[level - 1], f"encoder.downs.{level - 1}"), inner,
                         _node(ups[j + 1].up, f"decoder.ups.{j + 1}.up")))
    return Seq((_node(model.encoder.inc, "encoder.inc"), inner, _node(model.decoder.outc, "decoder.outc")))


def _depth(node: Node) -> int:
    """Number of primitive layers on the longest path (picks the main branch)."""
    if isinstance(node, Layer):
        return 1
    if isinstance(node, Seq):
        return sum(_depth(n) for n in node.items)
    return max(_depth(n) for n in node.items)


def _back(node: Node) -> BackMap:
    """Input interval of an output interval of ``node``."""
    if isinstance(node, Layer):
        return node.back
    if isinstance(node, Seq):
        maps = [_back(n) for n in reversed(node.items)]

        def seq(lo: int, hi: int) -> Interval:
            for m in maps:
                lo, hi = m(lo, hi)
            return lo, hi

        return seq
    maps = [_back(n) for n in node.items]

    def hull(lo: int, hi: int) -> Interval:
        parts = [m(lo, hi) for m in maps]
        return min(p[0] for p in parts), max(p[1] for p in parts)

    return hull


def _jump(node: Node) -> Fraction:
    if isinstance(node, Layer):
        return node.jump_factor()
    if isinstance(node, Seq):
        out = Fraction(1)
        for n in node.items:
            out *= _jump(n)
        return out
    jumps = {_jump(n) for n in node.items}
    if len(jumps) != 1:
        raise ValueError(f"branches end at different resolutions: {sorted(jumps)}")
    return jumps.pop()


# -- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerField:
    """Receptive field of one output position of a layer on the longest path, in input pixels."""

    name: str
    kind: str
    kernel: int
    stride: int
    dilation: int
    jump: Fraction  # input pixels between neighbouring positions of this layer's output
    size_min: int  # smallest support over output positions
    size_max: int  # largest support over output positions


@dataclass(frozen=True)
class ReceptiveField:
    """Support of one output pixel along one axis, for every position modulo ``period``."""

    layers: tuple[LayerField, ...]
    period: int
    extents: tuple[Interval, ...]  # (pixels before, pixels after) for output positions 0..period-1

    @property
    def before(self) -> int:
        """Largest number of input pixels above/left of an output pixel that influence it."""
        return max(e[0] for e in self.extents)

    @property
    def after(self) -> int:
        return max(e[1] for e in self.extents)

    @property
    def size_min(self) -> int:
        return min(a + b + 1 for a, b in self.extents)

    @property
    def size_max(self) -> int:
        return max(a + b + 1 for a, b in self.extents)

    def extent_at(self, position: int) -> Interval:
        return self.extents[position % self.period]


def _model(model_or_config: DDUNet | ModelConfig) -> DDUNet:
    if isinstance(model_or_config, DDUNet):
        return model_or_config
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        return DDUNet(model_or_config)


def analytic_receptive_field(model_or_config: DDUNet | ModelConfig, with_comm: bool = True) -> ReceptiveField:
    """Exact support of one output pixel, per layer and per position modulo ``2**depth``.

    ``with_comm=False`` gives the subnetwork alone (equivalently F=0); with it, the comm
    network acts on one infinitely large subdomain as in paper 001, Table IV.
    """
    model = _model(model_or_config)
    tree = network_tree(model, with_comm)
    period = model.config.downsampling
    rows: list[LayerField] = []

    def walk(node: Node, prefix: BackMap, jump: Fraction) -> tuple[BackMap, Fraction]:
        if isinstance(node, Layer):
            own = node.back

            def composed(lo: int, hi: int) -> Interval:
                return prefix(*own(lo, hi))

            jump = jump * node.jump_factor()
            sizes = _sizes(composed, jump, period)
            rows.append(LayerField(node.name, node.kind, node.kernel, node.stride, node.dilation, jump,
                                   min(sizes), max(sizes)))
            return composed, jump
        if isinstance(node, Seq):
            for n in node.items:
                prefix, jump = walk(n, prefix, jump)
            return prefix, jump
        main = max(node.items, key=_depth)
        walk(main, prefix, jump)  # records the layers of the longest branch
        own = _back(node)

        def merged(lo: int, hi: int) -> Interval:
            return prefix(*own(lo, hi))

        return merged, jump * _jump(node)

    final, jump = walk(tree, lambda lo, hi: (lo, hi), Fraction(1))
    if jump != 1:
        raise ValueError(f"the network output is not at input resolution (jump {jump})")
    extents = []
    for x in range(period):
        lo, hi = final(x, x)
        extents.append((x - lo, hi - x))
    return ReceptiveField(tuple(rows), period, tuple(extents))


def _sizes(back: BackMap, jump: Fraction, period: int) -> list[int]:
    """Support sizes of the output positions of one layer over a whole period of alignments."""
    sizes = []
    for x in range(2 * period):
        lo, hi = back(x, x)
        sizes.append(hi - lo + 1)
    return sizes


# -- paper 004 and halos --------------------------------------------------------------------------


def eq1_radius(model_or_config: DDUNet | ModelConfig, with_comm: bool = False) -> int:
    """Paper 004, Eq. 1: sum of ``jump * dilation * floor(k/2)`` over the convs of the longest path."""
    model = _model(model_or_config)
    total = Fraction(0)
    jump = Fraction(1)

    def walk(node: Node) -> None:
        nonlocal total, jump
        if isinstance(node, Layer):
            if node.kind == "conv":
                total += jump * node.dilation * (node.kernel // 2)
            jump *= node.jump_factor()
        elif isinstance(node, Seq):
            for n in node.items:
                walk(n)
        else:
            walk(max(node.items, key=_depth))

    walk(network_tree(model, with_comm))
    return int(total)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def exact_tiling_halo(model_or_config: DDUNet | ModelConfig) -> int:
    """Smallest halo, a multiple of ``2**depth``, that holds the support of every pixel of a zone.

    Zones of responsibility start on the ``2**depth`` grid, so a pixel at offset ``r`` from
    its zone's grid line has ``r + halo`` pixels before it inside the tile.
    """
    field = analytic_receptive_field(model_or_config, with_comm=False)
    p = field.period
    need = max(max(before - r, after - (p - 1 - r)) for r, (before, after) in enumerate(field.extents))
    return round_up(max(need, 0), p)


def comm_halo_bottleneck(config: ModelConfig) -> int:
    """Bottleneck pixels a communicated value reaches on each side: layers * (k // 2) * dilation."""
    return config.comm_halo


def comm_halo_pixels(config: ModelConfig) -> int:
    """The comm network's halo in image pixels: its bottleneck halo times ``2**depth``.

    A subdomain's output can change only when an input change lies in a subdomain whose
    bottleneck tile is within :func:`comm_halo_bottleneck` bottleneck pixels of its own.
    """
    return config.comm_halo * config.downsampling


# -- measurement with autograd ---------------------------------------------------------------------


def positive_probe(model: DDUNet) -> DDUNet:
    """A float64 eval copy whose activations are all positive, so no gradient vanishes by chance.

    Weights are positive and scaled by fan-in (values stay of order one), BatchNorm becomes
    the identity plus a positive shift, so every ReLU passes and every chain of layers
    carries a strictly positive derivative.
    """
    probe = copy.deepcopy(model).to(dtype=torch.float64, device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                w = module.weight
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]
                if isinstance(module, nn.ConvTranspose2d):
                    fan_in = w.shape[0]
                w.copy_((0.5 + torch.rand(w.shape, generator=generator, dtype=w.dtype)) / fan_in)
                if module.bias is not None:
                    module.bias.fill_(0.01)
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
                module.weight.fill_(1.0)
                module.bias.fill_(0.01)
    return probe


def measured_support(model: DDUNet, shape: tuple[int, int], pixel: tuple[int, int],
                     grid: tuple[int, int] = (1, 1)) -> tuple[Interval, Interval]:
    """Bounding box ((top, bottom), (left, right)) of the input pixels that influence ``pixel``.

    The gradient of the summed logits of one output pixel is taken twice: on an input that
    decreases strictly to the bottom-right, where every max-pool window passes its top-left
    element, and on the mirrored ramp, where it passes the bottom-right one. Autograd routes a
    max-pool's gradient to one element only, so these two runs reach the two extreme corners
    of the support. The support must not touch the image border (choose ``shape`` so).
    """
    probe = positive_probe(model)
    height, width = shape
    rows = torch.arange(height, dtype=torch.float64).view(-1, 1) / height
    cols = torch.arange(width, dtype=torch.float64).view(1, -1) / width
    boxes = []
    for sign in (-1.0, 1.0):
        ramp = 2.0 + sign * (rows + cols)
        x = ramp.expand(1, model.config.in_channels, height, width).clone().requires_grad_(True)
        out = probe(x, grid=grid)
        out[0, :, pixel[0], pixel[1]].sum().backward()
        hit = x.grad.abs().sum(dim=(0, 1)) > 0
        r = torch.nonzero(hit.any(dim=1)).flatten()
        c = torch.nonzero(hit.any(dim=0)).flatten()
        boxes.append((int(r.min()), int(r.max()), int(c.min()), int(c.max())))
    top = min(b[0] for b in boxes)
    bottom = max(b[1] for b in boxes)
    left = min(b[2] for b in boxes)
    right = max(b[3] for b in boxes)
    return (top, bottom), (left, right)


def measured_receptive_field(model: DDUNet, residue: int = 0, with_comm: bool = True) -> Interval:
    """Measured (pixels before, pixels after) of an output pixel at ``residue`` modulo ``2**depth``.

    The image is made large enough that the support stays clear of the border (the analytic
    field sizes it; the measurement itself does not use the analytic numbers).
    """
    if not with_comm and model.comm is not None:
        model = copy.deepcopy(model)
        model.comm = None
        model.config = model.config.replace(comm_features=0)
    step = model.config.downsampling
    field = analytic_receptive_field(model, with_comm=with_comm)
    margin = round_up(max(field.before, field.after) + 2 * step, step)
    side = 2 * margin + step
    p = margin + residue % step
    (top, bottom), (left, right) = measured_support(model, (side, side), (p, p))
    if min(top, left) == 0 or max(bottom, right) == side - 1:
        raise AssertionError("the measured support reaches the image border; the probe image is too small")
    if (top, bottom) != (left, right):
        raise AssertionError(f"support is not square: rows {top}..{bottom}, cols {left}..{right}")
    return p - left, right - p
