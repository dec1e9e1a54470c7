"""The sample-data contribution opens through napari's menu machinery."""

from __future__ import annotations

import numpy as np


def test_two_circles_sample_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ddunet", "two_circles")
    image, truth = viewer.layers["two circles"], viewer.layers["two circles ground truth"]
    assert image.data.shape == truth.data.shape == (512, 768)
    assert set(np.unique(truth.data)) == {0, 1, 2}
