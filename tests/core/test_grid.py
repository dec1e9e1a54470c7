"""Grid geometry: planning, validation messages, reflection padding and cropping."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ddunet.core.inference.grid import GridError, crop_to_image, pad_to_grid, plan_grid, reflect_index


def test_plan_pads_to_whole_subdomains():
    plan = plan_grid((75, 161), (16, 24), 4)
    assert plan.grid == (5, 7)
    assert plan.padded_shape == (80, 168)
    assert plan.bottleneck_tile == (4, 6)
    assert plan.bottleneck_shape == (20, 42)
    assert plan.tile_box(4, 6) == (64, 80, 144, 168)
    assert plan.cropped_box(4, 6) == (64, 75, 144, 161)


def test_exact_fit_has_no_padding():
    plan = plan_grid((64, 96), (32, 48), 8)
    assert plan.grid == (2, 2) and plan.padded_shape == (64, 96)


@pytest.mark.parametrize(
    ("size", "match"),
    [
        ((250, 256), r"multiple of 2\*\*depth = 8; height 250 is not, e.g. 248 or 256 would work"),
        ((256, 270), r"width 270 is not, e.g. 264 or 272"),
        ((0, 256), "must be positive"),
        (("a", 256), "two integers"),
        ((512, 256), "larger than the 300x400 image; use at most 296x400"),
    ],
)
def test_bad_subdomain_sizes(size, match):
    with pytest.raises(GridError, match=match):
        plan_grid((300, 400), size, 8)


def test_reflect_padding_matches_numpy_and_crops_back():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 75, 161))
    plan = plan_grid((75, 161), (16, 24), 4)
    padded = pad_to_grid(image, plan)
    assert padded.shape == (2, 80, 168)
    np.testing.assert_array_equal(padded, np.pad(image, ((0, 0), (0, 5), (0, 7)), mode="reflect"))
    np.testing.assert_array_equal(crop_to_image(padded, plan), image)
    index = reflect_index(np.arange(70, 80), 75)
    np.testing.assert_array_equal(index, [70, 71, 72, 73, 74, 73, 72, 71, 70, 69])


def test_regions_select_intersecting_subdomains():
    plan = plan_grid((75, 161), (16, 24), 4)
    assert plan.tiles_in_region(None) == (0, 5, 0, 7)
    assert plan.tiles_in_region((20, 40, 30, 60)) == (1, 3, 1, 3)
    assert plan.tiles_in_region((-5, 500, 150, 900)) == (0, 5, 6, 7)
    with pytest.raises(GridError, match="does not intersect"):
        plan.tiles_in_region((80, 90, 0, 10))
