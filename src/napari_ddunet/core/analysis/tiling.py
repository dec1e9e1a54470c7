"""Exact tiled inference of the plain U-Net (Majurski and Bajcsy, paper 004).

The image is cut into non-overlapping *zones of responsibility* (ZoR) that start at the
top-left corner and stride in multiples of ``2**depth``. Each zone is passed through the
network with a *halo* of context on every side (``tile = zone + 2 * halo``); only the zone is
kept. The halo is 004's radius (Eq. 1: the sum of ``2**level * floor(k / 2)`` over the
convolutions on the longest path) rounded up to a multiple of ``2**depth`` (Eq. 3), so every
tile starts on the pooling grid and sees the same feature maps as the whole image; where the
exact support needs more (depth 2, see :func:`unet_halo`) the halo is one step larger. At the
image border the tile is clamped, not padded: there the network's own zero padding is what the
monolithic pass sees too. The result equals one pass over the whole image.

This holds for the plain U-Net only (F=0, one subdomain). With a communication network the
output is not translation-equivariant over the image: even C=N applies the comm network per
subdomain, so the subdomain grid, not a tiling, decides the result. Use the engine for those.
"""

from __future__ import annotations

import torch

from napari_ddunet.core.analysis.receptive_field import eq1_radius, exact_tiling_halo, round_up
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.network.config import ModelConfig
from napari_ddunet.core.network.model import DDUNet


class TilingError(DDUNetError):
    """A tiling that cannot reproduce the monolithic pass; the message says what would work."""


def unet_halo(config: ModelConfig) -> int:
    """Halo in pixels for exact tiling: the smallest multiple of ``2**depth`` covering every support.

    This is 004's rule (Eq. 1 rounded up to a multiple of ``2**depth``, Eq. 3) made exact: Eq. 1
    ignores the pooling windows and transposed-conv pairs, which add up to 3 pixels. For
    depth >= 3 the rounding absorbs them and both agree; for depth 2, Eq. 1 gives 20, already a
    multiple of 4, while a pixel at the start of a zone depends on 22 pixels before it, so the
    halo is 24. For the ResNet-18 encoder Eq. 1 also misses the stem's overlapping max-pool.
    """
    return max(round_up(eq1_radius(config, with_comm=False), config.downsampling), exact_tiling_halo(config))


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise TilingError(f"{what} must be a positive integer or a pair of them, got {value!r}")
    return pair[0], pair[1]


def tiled_unet_forward(
    model: DDUNet, image: torch.Tensor, tile_size: int | tuple[int, int], halo: int | None = None
) -> torch.Tensor:
    """Logits of a plain U-Net computed tile by tile; equal to ``model(image)``.

    ``tile_size`` is what goes through the network at once (004's TileSize = ZoR + 2 * radius);
    ``halo`` defaults to :func:`unet_halo`. A smaller halo is allowed (it shows 004's Table 1
    errors) but it must stay a multiple of ``2**depth``.
    """
    config = model.config
    if config.comm_features != 0:
        raise TilingError(
            f"exact tiling applies to the plain U-Net only; {config.notation} has a communication network "
            "(F > 0), so its output depends on the subdomain grid: run it on the grid instead"
        )
    step = config.downsampling
    if image.ndim != 4 or image.shape[1] != config.in_channels:
        raise TilingError(f"expected a (B, {config.in_channels}, H, W) tensor, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    if height % step or width % step:
        raise TilingError(
            f"a {height}x{width} image needs sides that are multiples of {step} (2**depth); pad it to "
            f"{round_up(height, step)}x{round_up(width, step)} first"
        )
    halo = unet_halo(config) if halo is None else halo
    if not isinstance(halo, int) or halo < 0 or halo % step:
        raise TilingError(f"halo must be a non-negative multiple of {step} (2**depth), got {halo!r}")
    tile_h, tile_w = _pair(tile_size, "tile_size")
    for side in (tile_h, tile_w):
        if side % step or side <= 2 * halo:
            raise TilingError(
                f"tile side {side} must be a multiple of {step} and larger than twice the halo ({2 * halo}); "
                f"e.g. {round_up(2 * halo + step, step)}"
            )
    zone_h, zone_w = tile_h - 2 * halo, tile_w - 2 * halo
    out: torch.Tensor | None = None
    for y0 in range(0, height, zone_h):
        y1 = min(y0 + zone_h, height)
        ty0, ty1 = max(0, y0 - halo), min(height, y1 + halo)
        for x0 in range(0, width, zone_w):
            x1 = min(x0 + zone_w, width)
            tx0, tx1 = max(0, x0 - halo), min(width, x1 + halo)
            logits = model(image[:, :, ty0:ty1, tx0:tx1], grid=(1, 1))
            if out is None:
                out = logits.new_empty(image.shape[0], logits.shape[1], height, width)
            out[:, :, y0:y1, x0:x1] = logits[:, :, y0 - ty0:y1 - ty0, x0 - tx0:x1 - tx0]
    assert out is not None
    return out
