"""Sample data for napari's File > Open Sample menu."""

from __future__ import annotations

import numpy as np

from .core.synthetic import CLASS_COLORS, CLASS_NAMES, synthetic_window

#: The sample's grid of 32 x 32 px subdomains (the paper's subdomain size): 512 x 768 px, non-square.
SAMPLE_GRID = (16, 24)


def two_circles_image(grid: tuple[int, int] = SAMPLE_GRID, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The paper's synthetic task (paper 001 sec. III-D1): circle pairs in neighbouring subdomains joined
    by a line that only communication between subdomains can predict. Returns (image, ground truth)."""
    return synthetic_window(grid[0], grid[1], subdomain=(32, 32), seed=seed)


def make_two_circles():
    """npe2 sample-data command: the image and its ground-truth labels (hidden) in the task's colours."""
    from napari.utils.colormaps import DirectLabelColormap

    image, truth = two_circles_image()
    colors = {None: np.zeros(4), **{i: np.asarray(c) for i, c in enumerate(CLASS_COLORS)}}
    return [
        (image, {"name": "two circles"}, "image"),
        (
            truth,
            {
                "name": "two circles ground truth",
                "visible": False,
                "colormap": DirectLabelColormap(color_dict=colors),
                "features": {"index": list(range(len(CLASS_NAMES))), "class": list(CLASS_NAMES)},
            },
            "labels",
        ),
    ]
