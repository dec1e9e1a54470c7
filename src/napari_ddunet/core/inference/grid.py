"""Image geometry: the subdomain grid laid over an image, padding to whole subdomains and back.

An image of H x W pixels split into h x w subdomains gets ``ceil(H / h) x ceil(W / w)`` of them.
The part of the last row/column that lies outside the image is filled by mirror reflection
(numpy ``mode="reflect"``: the border pixel is not repeated), which keeps image statistics at the
border far closer to the training data than zero padding would. Every output is cropped back to
H x W, so the padding is invisible except through the subdomain content near the bottom/right edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_ddunet.core.errors import DDUNetError

#: The padding mode applied to images that are not a whole number of subdomains (numpy name).
PAD_MODE = "reflect"


class GridError(DDUNetError):
    """A subdomain size that cannot tile the image or does not fit the network's downsampling."""


def _suggest(side: int, step: int) -> str:
    below = max(step, side // step * step)
    above = below + step
    return f"{below}" if below == above else f"{below} or {above}"


def check_subdomain_size(subdomain_size: tuple[int, int], downsampling: int) -> tuple[int, int]:
    """Validate (h, w): positive integers, each a multiple of ``downsampling`` (2**depth)."""
    try:
        h, w = (int(s) for s in subdomain_size)
    except (TypeError, ValueError):
        raise GridError(f"subdomain size must be two integers (height, width), got {subdomain_size!r}") from None
    for name, side in (("height", h), ("width", w)):
        if side <= 0:
            raise GridError(f"subdomain {name} must be positive, got {side}")
        if side % downsampling:
            raise GridError(
                f"subdomain side must be a multiple of 2**depth = {downsampling}; "
                f"{name} {side} is not, e.g. {_suggest(side, downsampling)} would work"
            )
    return h, w


@dataclass(frozen=True)
class GridPlan:
    """Where every subdomain of an image lies; ``rows x cols`` subdomains of ``subdomain`` pixels."""

    image_shape: tuple[int, int]
    subdomain: tuple[int, int]
    downsampling: int

    @property
    def rows(self) -> int:
        return math.ceil(self.image_shape[0] / self.subdomain[0])

    @property
    def cols(self) -> int:
        return math.ceil(self.image_shape[1] / self.subdomain[1])

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.rows * self.subdomain[0], self.cols * self.subdomain[1]

    @property
    def bottleneck_tile(self) -> tuple[int, int]:
        """Size of one subdomain at bottleneck resolution."""
        return self.subdomain[0] // self.downsampling, self.subdomain[1] // self.downsampling

    @property
    def bottleneck_shape(self) -> tuple[int, int]:
        """Bottleneck mosaic size of the whole (padded) grid."""
        hb, wb = self.bottleneck_tile
        return self.rows * hb, self.cols * wb

    def tile_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of subdomain (row, col) in padded image pixels."""
        h, w = self.subdomain
        return row * h, (row + 1) * h, col * w, (col + 1) * w

    def cropped_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The part of subdomain (row, col) inside the image, in image pixels."""
        y0, y1, x0, x1 = self.tile_box(row, col)
        return y0, min(y1, self.image_shape[0]), x0, min(x1, self.image_shape[1])

    def tiles_in_region(self, region: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
        """Grid rectangle (r0, r1, c0, c1) of the subdomains that intersect ``region`` (all if None)."""
        if region is None:
            return 0, self.rows, 0, self.cols
        try:
            y0, y1, x0, x1 = (int(v) for v in region)
        except (TypeError, ValueError):
            raise GridError(f"region must be (y0, y1, x0, x1), got {region!r}") from None
        height, width = self.image_shape
        y0, y1, x0, x1 = max(0, y0), min(height, y1), max(0, x0), min(width, x1)
        if y0 >= y1 or x0 >= x1:
            raise GridError(f"region {tuple(region)} does not intersect the {height}x{width} image")
        h, w = self.subdomain
        return y0 // h, math.ceil(y1 / h), x0 // w, math.ceil(x1 / w)


def plan_grid(image_shape: tuple[int, int], subdomain_size: tuple[int, int], downsampling: int) -> GridPlan:
    """Check the subdomain size against the network and the image, and lay out the grid."""
    h, w = check_subdomain_size(subdomain_size, downsampling)
    height, width = (int(s) for s in image_shape)
    if h > height or w > width:
        raise GridError(
            f"subdomain {h}x{w} is larger than the {height}x{width} image; use at most "
            f"{max(downsampling, height // downsampling * downsampling)}x"
            f"{max(downsampling, width // downsampling * downsampling)}"
        )
    return GridPlan((height, width), (h, w), downsampling)


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map indices in [0, 2*size - 1) onto [0, size) by mirror reflection (numpy 'reflect')."""
    period = 2 * (size - 1) if size > 1 else 1
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def pad_to_grid(image: np.ndarray, plan: GridPlan) -> np.ndarray:
    """(C, H, W) -> (C, rows*h, cols*w) with the documented reflection padding."""
    height, width = plan.image_shape
    ph, pw = plan.padded_shape
    return np.pad(image, ((0, 0), (0, ph - height), (0, pw - width)), mode=PAD_MODE)


def crop_to_image(array: np.ndarray, plan: GridPlan) -> np.ndarray:
    """Drop the padded rows/columns of a (..., rows*h, cols*w) array."""
    height, width = plan.image_shape
    return array[..., :height, :width]
