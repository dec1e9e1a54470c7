"""Row-major conversion between whole images and batches of subdomains.

Subdomain (r, c) of image b sits at batch index ``(b * rows + r) * cols + c``; rows run
along H and columns along W, so non-square subdomains and rows != cols grids stay in place.
"""

from __future__ import annotations

import torch

Grid = tuple[int, int]


def to_subdomains(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, C, rows*h, cols*w) -> (B*rows*cols, C, h, w)."""
    rows, cols = grid
    b, c, height, width = x.shape
    if height % rows or width % cols:
        raise ValueError(f"a {height}x{width} map does not split into a {rows}x{cols} grid")
    h, w = height // rows, width // cols
    return x.reshape(b, c, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5).reshape(b * rows * cols, c, h, w)


def from_subdomains(tiles: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B*rows*cols, C, h, w) -> (B, C, rows*h, cols*w); the inverse of :func:`to_subdomains`."""
    rows, cols = grid
    n, c, h, w = tiles.shape
    if n % (rows * cols):
        raise ValueError(f"{n} subdomains do not fill whole {rows}x{cols} grids")
    b = n // (rows * cols)
    return tiles.reshape(b, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * h, cols * w)
