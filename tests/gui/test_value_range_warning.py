"""The widget names a value range far from the training data's (a napari warning notification, before any
work) and offers the normalisation modes; the bundled sample with its model gives no warning."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_ddunet import DDUNet, ModelConfig, save_checkpoint, segment
from napari_ddunet.core.checkpoints.format import Normalization
from napari_ddunet.core.io import normalization as nz


@pytest.fixture
def warned():
    """Messages of the value-range warning notifications shown during the test (napari's own are left out)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen: list[str] = []

    def record(notification):
        if notification.severity == NotificationSeverity.WARNING and "trained" in str(notification.message):
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def hela(realdata_fluorescence_uint16) -> np.ndarray:
    """A 96 x 128 crop of the real uint16 HeLa frame (values about 33000-36900)."""
    return np.ascontiguousarray(tifffile.imread(realdata_fluorescence_uint16)[200:296, 300:428])


def uint8_checkpoint(path, uint16: np.ndarray):
    """A 1-band model recorded as trained on the 8-bit version of ``uint16`` (global mode, as training writes)."""
    low, high = float(uint16.min()), float(uint16.max())
    uint8 = np.round((uint16 - low) / (high - low) * 255).astype(np.uint8)
    stats = nz.pooled_statistics([uint8.reshape(1, -1).astype(np.float64)], uint8.dtype)
    norm = Normalization(stats.mean, stats.std, "global", "uint8", stats.p1, stats.p99, stats.minimum, stats.maximum)
    config = ModelConfig(in_channels=1, num_classes=2, depth=2, base_channels=2, comm_features=4)
    return save_checkpoint(path, DDUNet(config), normalization=norm, subdomain_size=(32, 32))


def test_uint16_into_a_uint8_model_is_a_warning_notification(widget, hela, tmp_path, warned):
    widget.viewer.add_image(hela, name="hela")
    assert widget.load_checkpoint(uint8_checkpoint(tmp_path / "u8.pt", hela))
    assert widget.form.normalization.value == "checkpoint"
    result = widget.run_blocking(timeout_s=120)
    assert result is not None and not result.cancelled
    lines = widget.controller.warnings
    assert len(lines) == 1 and "uint16 image" in lines[0] and "--normalization percentile" in lines[0]
    assert lines[0] in warned


def test_the_normalisation_choice_reaches_the_engine(widget, hela, tmp_path, warned):
    path = uint8_checkpoint(tmp_path / "u8.pt", hela)
    widget.viewer.add_image(hela, name="hela")
    assert widget.load_checkpoint(path)
    widget.form.normalization.value = "percentile"
    assert widget.request().engine_kwargs()["normalization"] == "percentile"
    widget.run_blocking(timeout_s=120)
    assert len(widget.controller.warnings) == 1 and "overrides" in widget.controller.warnings[0]
    expected = segment(hela, path, subdomain_size=(32, 32), normalization="percentile")
    np.testing.assert_array_equal(np.asarray(widget.viewer.layers["hela DDU-Net labels"].data), expected)


def test_no_warning_on_the_bundled_sample_with_its_model(widget, warned):
    from napari_ddunet.core.checkpoints.bundled import bundled_models
    from napari_ddunet.plugin.sample_data import two_circles_image

    widget.viewer.add_image(two_circles_image((128, 192))[0], name="two circles")
    assert widget.load_checkpoint(bundled_models()["synthetic_ddunet_Y"])
    widget.run_blocking(timeout_s=120)
    assert widget.controller.warnings == [] and warned == []
