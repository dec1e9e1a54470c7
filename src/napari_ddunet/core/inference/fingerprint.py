"""What a resumed run must match: a fingerprint of the input and of the request, and the comparison.

A store records, at creation, the input's layout (shape, dtype, channel axis, channels) and a content hash
of a few small blocks spread over the image (over the first, middle and last plane of a stack), read
through the run's own :class:`~napari_ddunet.core.io.images.ImageSource`, beside the request's settings
(weights digest, architecture, subdomain size, grid, region, exchange, compute dtype, optional outputs,
normalisation). ``--resume`` recomputes the hashes on the blocks the store names, so another image of the
same shape is refused before a single subdomain is computed. A store written before a key existed is
compared on the keys it has.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from napari_ddunet.core.io.images import ImageSource

#: Blocks per side of the sample lattice (corners, edges and interior) and their side in pixels.
SAMPLE_LATTICE = 4
SAMPLE_SIDE = 32

#: Request settings a resumed run must share with the store (top-level ``napari_ddunet`` attributes).
REQUEST_KEYS = ("store_version", "notation", "weights", "image_shape", "subdomain_size", "grid", "region",
                "communicate", "dtype", "normalization", "bands", "pad_mode", "outputs", "stack")

#: Architecture fields that change the result without changing the weights digest (``config`` attribute).
CONFIG_KEYS = ("in_channels", "num_classes", "depth", "base_channels", "comm_features", "comm_layers",
               "comm_kernel", "comm_dilation", "encoder")

#: Input layout fields compared before the content hash.
LAYOUT_KEYS = ("shape", "dtype", "channel_axis", "channels")


def sample_blocks(shape: tuple[int, int]) -> list[list[int]]:
    """(y0, y1, x0, x1) of up to SAMPLE_LATTICE**2 small blocks evenly spread over an image of ``shape``."""
    height, width = shape
    bh, bw = min(SAMPLE_SIDE, height), min(SAMPLE_SIDE, width)
    n = SAMPLE_LATTICE - 1
    ys = sorted({round(i * (height - bh) / n) for i in range(SAMPLE_LATTICE)})
    xs = sorted({round(i * (width - bw) / n) for i in range(SAMPLE_LATTICE)})
    return [[y, y + bh, x, x + bw] for y in ys for x in xs]


def block_digests(sources: list[ImageSource], blocks: list[list[int]]) -> list[str]:
    """A short sha256 of each block's pixels as the run reads them (float64, channels first), plane after plane."""
    digests = []
    for source in sources:
        for y0, y1, x0, x1 in blocks:
            block = np.ascontiguousarray(source.read(y0, y1, x0, x1), dtype=np.float64)
            digests.append(hashlib.sha256(block.tobytes()).hexdigest()[:16])
    return digests


def input_fingerprint(sources: list[ImageSource]) -> dict[str, Any]:
    """The ``input`` attribute of a new store: layout of the (first) plane and the hash of the sample blocks
    of every sampled plane."""
    source = sources[0]
    blocks = sample_blocks(source.shape)
    return {
        "shape": [int(s) for s in source.array.shape],
        "dtype": str(source.dtype),
        "channel_axis": None if source.channel_axis is None else int(source.channel_axis),
        "channels": int(source.channels),
        "blocks": blocks,
        "digests": block_digests(sources, blocks),
    }


def resume_mismatch(stored: dict[str, Any], meta: dict[str, Any], sources: list[ImageSource]) -> str | None:
    """What differs between a store's attributes and this run (``meta``, its sampled planes), or None when it
    may resume.

    Only keys the store has are compared, so stores written before a key existed still resume.
    """
    for key in REQUEST_KEYS:
        if key in stored and stored[key] != meta.get(key):
            return f"it was made with {key}={stored[key]!r}, this run has {meta.get(key)!r}"
    old, new = stored.get("config"), meta.get("config") or {}
    if isinstance(old, dict):
        for key in CONFIG_KEYS:
            if key in old and old[key] != new.get(key):
                return f"it was made by a model with {key}={old[key]!r}, this one has {new.get(key)!r}"
    if "input" not in stored:
        return None
    return _input_mismatch(stored["input"], meta["input"], sources)


def _input_mismatch(old: Any, new: dict[str, Any], sources: list[ImageSource]) -> str | None:
    if not isinstance(old, dict):
        return "its input fingerprint is unreadable"
    for key in LAYOUT_KEYS:
        if key in old and old[key] != new[key]:
            return f"it was made from an input with {key}={old[key]!r}, this input has {new[key]!r}"
    blocks, digests = old.get("blocks"), old.get("digests")
    valid = _valid_blocks(blocks, sources[0].shape) and isinstance(digests, list)
    if not valid or len(digests) != len(blocks) * len(sources):
        return "its input fingerprint is unreadable"
    current = new["digests"] if blocks == new["blocks"] else block_digests(sources, blocks)
    for i, (was, now) in enumerate(zip(digests, current, strict=True)):
        if was != now:
            y0, y1, x0, x1 = blocks[i % len(blocks)]
            where = f" of sampled plane {i // len(blocks) + 1} of {len(sources)}" if len(sources) > 1 else ""
            return f"it was made from another image (pixels y={y0}..{y1 - 1}, x={x0}..{x1 - 1}{where} differ)"
    return None


def _valid_blocks(blocks: Any, shape: tuple[int, int]) -> bool:
    """Blocks a store names are read only when they are few, whole and inside the image."""
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 4 * SAMPLE_LATTICE ** 2:
        return False
    height, width = shape
    for box in blocks:
        if not (isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box)):
            return False
        y0, y1, x0, x1 = box
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width and (y1 - y0) * (x1 - x0) <= 4 * SAMPLE_SIDE ** 2):
            return False
    return True
