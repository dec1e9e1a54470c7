"""Multi-process (torchrun) inference: each rank owns a contiguous band of whole subdomain rows,
so it alone writes those rows' output chunks. Ranks meet once, at the communication step: every
rank encodes its band, then an all-gather swaps the ``k`` F-channel bottleneck rows at each band
edge (``k = ceil(comm_halo / hb)``), after which each rank communicates and decodes its own rows.
Every non-empty band holds at least ``k`` rows, so a rank's halo always lies in its neighbours' edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from napari_ddunet.core.inference.bottleneck import BottleneckCache
from napari_ddunet.core.inference.process_group import init_process_group, rank_default_device, torchrun_world


@dataclass
class DistContext:
    """Rank, world size and the device collectives run on (CPU for gloo, the rank's GPU for nccl)."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def from_env(cls) -> DistContext | None:
        """Join the process group that torchrun describes in the environment (None outside torchrun)."""
        if torchrun_world() <= 1:
            return None
        device = rank_default_device()
        rank, world = init_process_group([device])
        if dist.get_backend() != "nccl":  # a group someone else opened with gloo
            device = torch.device("cpu")
        return cls(rank, world, device)

    def barrier(self) -> None:
        dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on some rank (also a barrier)."""
        value = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def own_rows(self, r0: int, r1: int, k: int) -> tuple[int, int]:
        """This rank's grid rows: contiguous bands of at least max(k, 1) rows, empty for surplus ranks."""
        n = r1 - r0
        active = max(1, min(self.world, n // max(k, 1)))
        if self.rank >= active:
            return r1, r1
        base, extra = divmod(n, active)
        start = r0 + self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def exchange_halo(self, cache: BottleneckCache, own: list[int], need_rows: list[int], k: int) -> None:
        """All-gather the first and last k own bottleneck rows; keep the foreign rows this rank needs."""
        hb, wb = cache.tile
        edge = sorted(set(own[:k]) | set(own[-k:])) if own else []
        rows = torch.full((2 * k,), -1, dtype=torch.int64)
        block = torch.zeros((2 * k, cache.features, hb, len(cache.cols) * wb), dtype=cache.dtype)
        for i, r in enumerate(edge):
            rows[i] = r
            block[i] = cache.row_mosaic(r)
        gathered_rows = [torch.empty_like(rows, device=self.device) for _ in range(self.world)]
        gathered = [torch.empty_like(block, device=self.device) for _ in range(self.world)]
        dist.all_gather(gathered_rows, rows.to(self.device))
        dist.all_gather(gathered, block.to(self.device))
        wanted = set(need_rows) - set(own)
        for ids, data in zip(gathered_rows, gathered, strict=True):
            ids, data = ids.to("cpu"), data.to("cpu")
            for i, r in enumerate(ids.tolist()):
                if r in wanted:
                    cache.put_row_mosaic(r, data[i])
