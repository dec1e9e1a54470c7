"""Sample data for the napari File > Open Sample menu."""

from __future__ import annotations

import numpy as np

from napari_ddunet.plugin.live import label_colormap


def two_circles_image(shape: tuple[int, int] = (512, 768), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey image with two discs of different brightness, and its 3-class ground truth.

    Small enough to segment in seconds on a CPU; its width is not a multiple of its height so
    that non-square grids are exercised as soon as someone opens it.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    truth = np.zeros(shape, dtype=np.uint8)
    for label, (cy, cx, r) in enumerate(((0.45 * h, 0.3 * w, 0.28 * h), (0.55 * h, 0.72 * w, 0.22 * h)), start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = label
    image = np.choose(truth, [0.1, 0.55, 0.9]).astype(np.float32)
    image += rng.normal(0, 0.08, shape).astype(np.float32)
    return image, truth


def make_two_circles():
    """npe2 sample-data command: the image and its ground-truth labels."""
    image, truth = two_circles_image()
    return [
        (image, {"name": "two circles"}, "image"),
        (truth, {"name": "two circles ground truth", "visible": False}, "labels"),
    ]


# -- the paper's task, real data and the gigapixel canvas (pure generators in core/samples.py) ----


def _layers(key: str, name: str, image, mask, colors, image_kwargs=None, mask_kwargs=None) -> list:
    from napari_ddunet.core.data.samples import sample_metadata

    meta = sample_metadata(key)
    return [
        (image, {"name": name, "metadata": dict(meta), **(image_kwargs or {})}, "image"),
        (mask, {"name": f"{name} ground truth", "metadata": dict(meta), "visible": False,
                "colormap": label_colormap(colors), **(mask_kwargs or {})}, "labels"),
    ]


def make_synthetic_strip():
    """npe2 sample: the paper's 1 x 8 strip of 32 px subdomains with one circle pair, and its mask."""
    from napari_ddunet.core.data import samples, synthetic

    image, mask = samples.synthetic_strip_sample()
    return _layers("synthetic_strip", "two-circles strip", image, mask, synthetic.CLASS_COLORS)


def make_synthetic_grid():
    """npe2 sample: an 8 x 8 grid of 32 px subdomains with 8 circle pairs, and its mask."""
    from napari_ddunet.core.data import samples, synthetic

    image, mask = samples.synthetic_grid_sample()
    return _layers("synthetic_grid", "two-circles grid", image, mask, synthetic.CLASS_COLORS)


def make_bluemarble():
    """npe2 sample: NASA Blue Marble (5400 x 2700 RGB) with its GSHHS ocean / land / lake mask."""
    from napari_ddunet.core.data import bluemarble, samples

    image, mask = samples.bluemarble_sample()
    return _layers("bluemarble", "Blue Marble", image, mask, bluemarble.CLASS_COLORS, {"rgb": True})


def make_synthetic_huge():
    """npe2 sample: a 40960 x 40960 procedural two-circles canvas, rendered chunk by chunk on demand."""
    from napari_ddunet.core.data import samples, synthetic

    image, mask = samples.huge_synthetic_sample()
    return _layers("synthetic_huge", "gigapixel two circles", image, mask, synthetic.CLASS_COLORS,
                   {"multiscale": True, "contrast_limits": (0.0, 1.0)}, {"multiscale": True})
