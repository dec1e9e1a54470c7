"""The F-channel bottlenecks of encoded subdomains, held on the host until communication needs them.

The scheduler fills the cache as rows are encoded (or loaded from a resumed store), reads windows of
rows as one mosaic for the communication network and evicts rows no later band needs; the torchrun
halo exchange reads and fills whole rows through the same interface.
"""

from __future__ import annotations

import torch


class BottleneckCache:
    """Bottlenecks keyed by (row, col), each (F, hb, wb), for the columns ``cols`` of a run."""

    def __init__(self, cols: list[int], tile: tuple[int, int], features: int, dtype: torch.dtype) -> None:
        self.cols = list(cols)
        self.tile = tile
        self.features = features
        self.dtype = dtype
        self._tiles: dict[tuple[int, int], torch.Tensor] = {}
        self.peak = 0   # most subdomains held at once: what the memory plan's band must cover

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self._tiles

    def put(self, row: int, col: int, tensor: torch.Tensor) -> None:
        self._tiles[(row, col)] = tensor
        self.peak = max(self.peak, len(self._tiles))

    def has_row(self, row: int) -> bool:
        return all((row, c) in self._tiles for c in self.cols)

    def row_mosaic(self, row: int, j0: int = 0, j1: int | None = None) -> torch.Tensor:
        """(F, hb, n * wb): the row's bottlenecks side by side (of the columns at positions [j0, j1))."""
        return torch.cat([self._tiles[(row, c)] for c in self.cols[j0:j1]], dim=-1)

    def put_row_mosaic(self, row: int, mosaic: torch.Tensor) -> None:
        """Split an (F, hb, n * wb) mosaic of ``row`` (e.g. received from another rank) into its subdomains."""
        wb = self.tile[1]
        for j, c in enumerate(self.cols):
            self.put(row, c, mosaic[:, :, j * wb:(j + 1) * wb].clone())

    def mosaic(self, r0: int, r1: int, j0: int = 0, j1: int | None = None) -> torch.Tensor:
        """(F, (r1 - r0) * hb, n * wb): rows [r0, r1) (columns at positions [j0, j1)) as one image for the
        communication network."""
        return torch.cat([self.row_mosaic(r, j0, j1) for r in range(r0, r1)], dim=-2)

    def evict_above(self, row: int) -> None:
        """Drop every row before ``row``: no later window reaches back to them."""
        for key in [key for key in self._tiles if key[0] < row]:
            del self._tiles[key]
