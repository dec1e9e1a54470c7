"""The widget's band picker: shown for an image with a channel axis, the model's first bands by default,
the user's bands (in their order) passed to the engine; a band the image lacks is one notification."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import data as skdata

from napari_ddunet import load_checkpoint, segment


@pytest.fixture(scope="module")
def landsat(realdata_multiband_uint16) -> np.ndarray:
    """A (10, 48, 64) uint16 crop of the real 10-band Landsat 8 scene (coastal, B, G, R, NIR, ...), CYX."""
    return np.ascontiguousarray(tifffile.imread(realdata_multiband_uint16)[:, 200:248, 300:364])


def shown(form, name: str) -> bool:
    """Whether the form field would be on screen once the dock is shown."""
    return getattr(form, name).native.isVisibleTo(form.native)


def test_picker_follows_the_image_and_the_model(widget, checkpoint_factory, landsat):
    viewer, form = widget.viewer, widget.form
    viewer.add_image(landsat[0], name="grey")
    assert widget.load_checkpoint(checkpoint_factory("rgb.pt", in_channels=3, subdomain=(16, 16)))
    assert not shown(form, "bands")                                   # a YX image has no bands to choose
    viewer.add_image(landsat, name="landsat")
    form.image.value = viewer.layers["landsat"]
    assert form.channel_axis.value == 0 and shown(form, "bands")
    assert form.bands.value == [0, 1, 2] and form.bands.label == "Bands (0..9)"
    width = form.native.sizeHint().width()
    assert widget.load_checkpoint(checkpoint_factory("s2.pt", in_channels=10, subdomain=(16, 16)))
    assert form.bands.value == list(range(10))                        # the new model's first bands
    assert form.native.sizeHint().width() == width                    # one band per row: the dock keeps its width
    form.channel_axis.value = None
    assert not shown(form, "bands")


def test_picker_defaults_to_the_bands_the_model_was_trained_on(widget, tmp_path, landsat):
    from napari_ddunet import DDUNet, ModelConfig, save_checkpoint

    config = ModelConfig(in_channels=3, num_classes=2, depth=2, base_channels=2, comm_features=4)
    path = save_checkpoint(tmp_path / "trained.pt", DDUNet(config), subdomain_size=(16, 16),
                           training_args={"channels": [3, 2, 1]})
    widget.viewer.add_image(landsat, name="landsat")
    assert widget.load_checkpoint(path)
    assert widget.form.bands.value == [3, 2, 1]
    widget.viewer.add_image(landsat[:2], name="two bands")              # lacks band 3: the first bands instead
    widget.form.image.value = widget.viewer.layers["two bands"]
    assert widget.form.bands.value == [0, 1]


def test_chosen_bands_reach_the_engine_in_order(widget, checkpoint_factory, landsat):
    path = checkpoint_factory("rgb.pt", in_channels=3, subdomain=(16, 16))
    widget.viewer.add_image(landsat, name="landsat")
    assert widget.load_checkpoint(path)
    widget.form.bands.value = [3, 2, 1]                               # R, G, B of Landsat 8
    request = widget.request()
    assert request.channels == (3, 2, 1) and request.engine_kwargs()["channels"] == (3, 2, 1)
    result = widget.run_blocking(timeout_s=120)
    assert result is not None and not result.cancelled
    expected = segment(landsat, load_checkpoint(path), subdomain_size=(16, 16), channels=(3, 2, 1))
    np.testing.assert_array_equal(np.asarray(widget.viewer.layers["landsat DDU-Net labels"].data), expected)


def test_a_band_the_image_lacks_is_one_notification(widget, checkpoint_factory, landsat, errors):
    widget.viewer.add_image(landsat, name="landsat")
    assert widget.load_checkpoint(checkpoint_factory("rgb.pt", in_channels=3, subdomain=(16, 16)))
    widget.form.bands.value = [3, 12, 1]
    assert widget.run() is None and not widget.controller.running
    assert errors == ["band 12 does not exist: the image has 10 bands (--channels takes indices 0..9)"]
    widget.form.bands.value = [3, 2]
    assert widget.run() is None
    assert errors[-1] == "2 bands chosen (3 2), the model expects 3"


def test_rgba_layer_feeds_an_rgb_model_its_colour_bands(widget, checkpoint_factory):
    """An RGBA napari layer says its 4th band is alpha: the picker's default leaves it out."""
    rgb = skdata.astronaut()[::8, ::8]
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)
    widget.viewer.add_image(rgba, name="photo", rgb=True)
    path = checkpoint_factory("rgb.pt", in_channels=3, subdomain=(16, 16))
    assert widget.load_checkpoint(path)
    assert widget.form.channel_axis.value == 2 and widget.form.bands.value == [0, 1, 2]
    result = widget.run_blocking(timeout_s=120)
    assert result is not None and not result.cancelled
    expected = segment(rgb, load_checkpoint(path), subdomain_size=(16, 16))
    np.testing.assert_array_equal(np.asarray(widget.viewer.layers["photo DDU-Net labels"].data), expected)
