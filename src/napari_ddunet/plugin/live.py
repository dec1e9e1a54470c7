"""Helpers that turn engine outputs into napari layer arguments (no Qt widgets here).

Labels are shown straight from the engine's output array, never copied, so a layer.refresh()
shows whatever subdomains the engine has written so far. Zarr arrays are wrapped without dask:
dask's cache would keep serving the chunks read before they were written. How often to refresh
is :class:`RefreshPacer`'s decision.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Shortest spacing of two live display ticks (seconds): what a user sees as "filling in" on a GPU canvas.
SHORTEST_REFRESH_S = 0.4
#: Longest spacing (seconds): however slow the canvas, the view never looks frozen for longer.
LONGEST_REFRESH_S = 5.0
#: Share of the run's wall time that live display ticks may take from the GUI thread.
REDRAW_SHARE = 0.05
#: Above this many pixels on a side, in-memory labels get strided levels, so a zoomed-out view redraws
#: a small level instead of re-uploading the whole array on every refresh.
PYRAMID_SIDE = 2048


class StridedView:
    """Every ``step``-th pixel of a 2D array, read lazily: a cheap pyramid level for live display."""

    def __init__(self, base: Any, step: int) -> None:
        self.base = base
        self.step = step
        self.shape = tuple(math.ceil(s / step) for s in base.shape)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        full = []
        for k, size in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, stride = k.indices(size)
                full.append(slice(start * self.step, stop * self.step, stride * self.step))
            else:
                full.append(int(k) * self.step)
        return np.asarray(self.base[tuple(full)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[(slice(None),) * self.ndim]
        return data if dtype is None else data.astype(dtype)


@dataclass
class RefreshPacer:
    """Spaces the live display's ticks by what each one costs, so redraws take a bounded share of a run.

    A tick repaints the progress bar and refreshes the labels: napari re-slices them and the window is
    redrawn. On a GPU that takes a few milliseconds and ticks come every :data:`SHORTEST_REFRESH_S`.
    Without one (Xvfb, Mesa's llvmpipe) the drawing runs on the CPU, taken from the engine's cores, and
    a tick stalls the GUI thread for tens of milliseconds (20-43 ms for the Blue Marble view on the
    2-core VM): there ticks space out to ``cost / share`` (docs/benchmarks.md, bench --gui).
    """

    shortest_s: float = SHORTEST_REFRESH_S
    longest_s: float = LONGEST_REFRESH_S
    share: float = REDRAW_SHARE
    #: measured cost of the last five ticks (seconds of GUI-thread stall)
    costs: deque[float] = field(default_factory=lambda: deque(maxlen=5))

    def record(self, seconds: float) -> None:
        self.costs.append(max(0.0, float(seconds)))

    @property
    def cost_s(self) -> float:
        """The recent cost: the median of the last five ticks, so one slow frame does not stall the view."""
        return float(np.median(self.costs)) if self.costs else 0.0

    def interval_s(self) -> float:
        """How long after a tick starts the next one may start."""
        return min(self.longest_s, max(self.shortest_s, self.cost_s / self.share))


def _store_levels(output: str | None) -> list[Any] | None:
    """The labels pyramid written by the engine (``labels/0, 1, ...``), or None."""
    if not output:
        return None
    from pathlib import Path

    from napari_ddunet.core.io.images import InputError, open_levels

    try:
        return open_levels(Path(output) / "labels").levels
    except (InputError, KeyError):
        return None


def expects_multiscale(image_yx: tuple[int, int], subdomain: tuple[int, int], downsampling: int,
                       output: str | None) -> bool:
    """Whether :func:`labels_layer_data` will return levels for this run (known before it starts)."""
    if output:
        from napari_ddunet.core.inference.grid import GridPlan
        from napari_ddunet.core.inference.sink import pyramid_levels

        return pyramid_levels(GridPlan(tuple(image_yx), tuple(subdomain), downsampling)) > 1
    return max(image_yx) > PYRAMID_SIDE


def labels_layer_data(labels: Any, output: str | None = None) -> tuple[Any, bool]:
    """(data, multiscale) for ``viewer.add_labels``: the store's pyramid when it has one, else the
    array itself, with strided views added when it is too big to show whole."""
    levels = _store_levels(output)
    if levels is not None and len(levels) > 1:
        return levels, True
    if labels.ndim == 2 and max(labels.shape) > PYRAMID_SIDE:
        steps = [2**k for k in range(1, 16) if max(labels.shape) / 2**k >= PYRAMID_SIDE // 4]
        return [labels, *(StridedView(labels, s) for s in steps)], True
    return labels, False


def label_colormap(class_colors) -> Any:
    """The checkpoint's class colours as a napari DirectLabelColormap (unknown values transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    mapping: dict[int | None, Any] = {None: np.zeros(4)}
    mapping.update({i: np.asarray(c, dtype=float) for i, c in enumerate(class_colors)})
    return DirectLabelColormap(color_dict=mapping)


def feature_layer_kwargs(
    maps: Any,
    *,
    downsampling: int,
    image_scale: np.ndarray,
    image_translate: np.ndarray,
    offset: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """Scale/translate that put bottleneck pixel (i, j) over the centre of its image block.

    Bottleneck pixel i covers image pixels i*s .. i*s + s - 1 (s = 2**depth), whose centre is
    i*s + (s - 1)/2; napari places data pixel i at translate + i*scale, hence these values.
    ``offset`` is the image pixel where the mosaic starts (a region run's first subdomain).
    """
    s = float(downsampling)
    scale = np.asarray(image_scale, dtype=float) * s
    centre = (s - 1) / 2
    translate = np.asarray(image_translate, dtype=float) + (np.asarray(offset, dtype=float) + centre) * np.asarray(
        image_scale, dtype=float
    )
    sample = np.asarray(maps[:, :: max(1, maps.shape[-2] // 256), :: max(1, maps.shape[-1] // 256)])
    low, high = float(np.nanmin(sample)), float(np.nanmax(sample))
    return {
        "scale": (1.0, *scale),
        "translate": (0.0, *translate),
        "colormap": "magma",
        "contrast_limits": (low, high if high > low else low + 1.0),
        "blending": "additive",
        "opacity": 0.8,
    }


def camera_of(viewer) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` from napari 0.9 on (``viewer.camera`` is deprecated there)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def visible_region(viewer, layer, yx: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) image pixels of ``layer`` visible in the canvas, or None if all of it is."""
    camera = camera_of(viewer)
    zoom = float(camera.zoom)
    centre = np.asarray(camera.center, dtype=float)[-2:]
    half = np.asarray(viewer.canvas.size, dtype=float) / (2 * zoom)
    world_lo, world_hi = centre - half, centre + half
    scale = np.asarray(layer.scale, dtype=float)[list(yx)]
    translate = np.asarray(layer.translate, dtype=float)[list(yx)]
    lo = (world_lo - translate) / scale
    hi = (world_hi - translate) / scale
    shape = layer.data[0].shape if layer.multiscale else layer.data.shape
    height, width = shape[yx[0]], shape[yx[1]]
    y0, x0 = max(0, math.floor(lo[0] + 0.5)), max(0, math.floor(lo[1] + 0.5))
    y1, x1 = min(height, math.ceil(hi[0] + 0.5)), min(width, math.ceil(hi[1] + 0.5))
    if y0 >= y1 or x0 >= x1:
        return None
    if (y0, y1, x0, x1) == (0, height, 0, width):
        return None
    return y0, y1, x0, x1


def _union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None):
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def coalesce_events(events: Generator, interval: float = 0.1) -> Generator:
    """Pass an engine event generator through, yielding at most one event per ``interval`` seconds.

    Every yield becomes a queued signal handled in the GUI thread, and the GUI thread's time is taken
    from the engine's cores: the phases alternate with every batch of subdomains, so passing each
    phase's last event on sent 160 events a second (docs/benchmarks.md, bench --gui). Kept: the
    first event (it carries the outputs) and the final one; skipped events' written regions are
    merged into the bounding box of the next event passed on. Returns the engine's result.
    """
    pending = None
    last = 0.0
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            if pending is not None:
                yield pending
            return stop.value
        if pending is not None:
            event = dataclasses.replace(event, region=_union(pending.region, event.region))
            pending = None
        now = time.monotonic()
        if event.outputs is not None or event.phase in ("done", "cancelled") or now - last >= interval:
            last = now
            yield event
        else:
            pending = event
