"""The synthetic two-circles generator: geometry, classes and reproducibility."""

import numpy as np
import pytest

from napari_ddunet.core.data import synthetic
from napari_ddunet.core.data.synthetic import (
    CIRCLE,
    LINE,
    SyntheticError,
    synthetic_grid,
    synthetic_strip,
    synthetic_window,
)


def _circle_subdomains(mask: np.ndarray, h: int, w: int) -> list[tuple[int, int]]:
    """Subdomains holding circle pixels; fails if a circle touches two subdomains."""
    rows, cols = mask.shape[0] // h, mask.shape[1] // w
    owners = []
    for r in range(rows):
        for c in range(cols):
            block = mask[r * h:(r + 1) * h, c * w:(c + 1) * w]
            if (block == CIRCLE).any():
                owners.append((r, c))
    return owners


@pytest.mark.parametrize("seed", range(40))
def test_strip_circles_stay_inside_distinct_subdomains(seed):
    image, mask = synthetic_strip(4, seed=seed)
    assert image.shape == mask.shape == (32, 128)
    assert set(np.unique(mask)) <= {0, 1, 2}
    # the image shows exactly the circles: white where the mask says circle, black elsewhere
    assert np.array_equal(image == 1.0, mask == CIRCLE)
    assert set(np.unique(image)) == {0.0, 1.0}
    owners = _circle_subdomains(mask, 32, 32)
    assert len(owners) == 2
    (_, c0), (_, c1) = owners
    assert 1 <= abs(c0 - c1) <= 2  # different subdomains, at most one in between
    for _, c in owners:
        block = mask[:, c * 32:(c + 1) * 32] == CIRCLE
        # the whole radius-4 disc (52 pixels, 8 across) lies inside this one subdomain
        assert block.sum() == 52
        ys, xs = np.nonzero(block)
        assert ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7


def test_disc_and_line_shapes():
    pairs = [((8, 8), (8, 40))]
    _, mask = synthetic.render((16, 48), pairs)
    disc = mask[:, :16] == CIRCLE
    assert disc.sum() == 52 and disc[4:12, 4:12].sum() == 52  # rows/cols 4..11: 2*radius pixels across
    # a horizontal line between the discs is exactly 2 pixels wide (rows 7 and 8)
    assert np.array_equal(np.nonzero((mask == LINE).any(axis=1))[0], [7, 8])
    assert (mask[7:9, 12:36] == LINE).all()


def test_a_later_line_never_covers_an_earlier_circle():
    """Mask and image agree where pairs overlap: every white pixel is a circle in the mask."""
    first = ((16, 16), (16, 48))
    crossing = ((4, 20), (28, 20))  # its line runs straight through the first pair's left circle
    image, mask = synthetic.render((32, 64), [first, crossing])
    assert np.array_equal(image == 1.0, mask == CIRCLE)
    assert (mask == LINE).any()


def test_grid_classes_and_reproducibility():
    a = synthetic_grid(3, 4, (16, 24), seed=5, pairs=3)
    b = synthetic_grid(3, 4, (16, 24), seed=5, pairs=3)
    c = synthetic_grid(3, 4, (16, 24), seed=6, pairs=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert len(_circle_subdomains(a[1], 16, 24)) == 6
    assert (a[1] == LINE).any()


def test_window_is_independent_of_how_the_plane_is_cut():
    whole = synthetic_window(6, 8, (0, 0), (16, 16), seed=3, block=(2, 2))
    part = synthetic_window(3, 5, (2, 3), (16, 16), seed=3, block=(2, 2))
    for full, piece in zip(whole, part, strict=True):
        assert np.array_equal(full[32:80, 48:128], piece)
    assert len(_circle_subdomains(whole[1], 16, 16)) == 2 * 12  # one pair per 2x2 block


def test_impossible_requests_raise_one_line_errors():
    with pytest.raises(SyntheticError, match="distinct subdomains"):
        synthetic_grid(1, 2, pairs=2)
    with pytest.raises(SyntheticError, match="does not fit"):
        synthetic_grid(1, 2, subdomain=6)
