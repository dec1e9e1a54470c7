"""Sample data for the napari File > Open Sample menu."""

from __future__ import annotations

import numpy as np


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
