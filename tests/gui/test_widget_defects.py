"""Widget defects of issue 10 item 6, each driven through the form and the controller."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ddunet.plugin.grid_layer import GRID_LAYER_NAME
from napari_ddunet.plugin.widget import controller as controller_module


def test_compare_on_a_huge_image_writes_to_a_store(widget, checkpoint, qtbot, monkeypatch):
    """'Compare without communication' over a whole image above the in-memory threshold follows the
    output policy of a main run: a store, not labels in RAM."""
    monkeypatch.setattr(controller_module, "IN_MEMORY_PIXELS", 64 * 64)
    image = np.random.default_rng(7).random((96, 128)).astype(np.float32)
    widget.viewer.add_image(image, name="img")
    assert widget.load_checkpoint(checkpoint)
    widget.viewer.reset_view()
    assert widget.current_view_region() is None  # the whole image is in view
    request = widget.compare_without_communication()
    assert request is not None and request.kind == "compare"
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=60_000)
    assert request.output is not None and request.output.endswith(".zarr")
    assert widget.controller.last_result.output == request.output
    assert "img labels without communication" in widget.viewer.layers


def test_growing_the_subdomain_keeps_the_grid_current(make_napari_viewer, qtbot, checkpoint, errors):
    """1947 x 1933: growing the subdomain used to raise 'index 64 is out of bounds' and leave the Grid line stale."""
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = make_napari_viewer(show=True)
    widget = DDUNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DDU-Net")
    viewer.add_image(np.zeros((1947, 1933), np.float32), name="big")
    assert widget.load_checkpoint(checkpoint)
    for side in range(48, 96, 8):  # 41 x 41 subdomains down to 22 x 21, all with index texts
        widget.form.subdomain_size.value = (side, side)
        rows, cols = -(-1947 // side), -(-1933 // side)
        qtbot.waitUntil(lambda rows=rows, cols=cols: widget.form.grid.value.startswith(f"{rows} x {cols} "))
        qtbot.wait(20)
        assert len(viewer.layers[GRID_LAYER_NAME + " indices"].data) == rows * cols
    assert errors == []


def test_output_path_belongs_to_one_image(make_napari_viewer, tmp_path, checkpoint):
    """An output path is never offered for another image, nor in the next session."""
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = make_napari_viewer()
    first = DDUNetWidget(viewer)
    viewer.add_image(np.zeros((64, 64), np.float32), name="a")
    first.load_checkpoint(checkpoint)
    first.form.output.value = str(tmp_path / "a.zarr")
    first.form.subdomain_size.value = (64, 64)  # a preference: remembered
    viewer.add_image(np.zeros((64, 64), np.float32), name="b")
    first.form.image.value = viewer.layers["b"]
    assert first.form.output.value == ""
    second = DDUNetWidget(viewer)
    assert second.form.subdomain_size.value == (64, 64)
    assert second.form.output.value == ""


@pytest.mark.parametrize("shape", [(1, 40, 48, 3)])
def test_rgb_layer_with_a_leading_singleton_runs(widget, checkpoint_factory, qtbot, shape):
    """An RGB layer of shape (1, H, W, 3): the form's channel axis is one the engine accepts."""
    image = np.random.default_rng(8).integers(0, 255, shape, dtype=np.uint8)
    widget.viewer.add_image(image, name="rgb", rgb=True)
    assert widget.load_checkpoint(checkpoint_factory("rgb.pt", in_channels=3, subdomain=(16, 16)))
    assert widget.form.channel_axis.value == 3
    result = widget.run_blocking(timeout_s=60)
    assert result is not None and not result.cancelled
    assert np.asarray(widget.viewer.layers["rgb DDU-Net labels"].data).shape == (40, 48)


def test_run_click_reuses_the_result_layer_built_before_it(widget, checkpoint, qtbot):
    """The Labels layer (about half a second of GUI time to build) exists, hidden, once an image and a model
    are chosen; the Run click adds no layer, it shows that one and points it at the engine's labels."""
    image = np.random.default_rng(3).random((64, 96)).astype(np.float32)
    widget.viewer.add_image(image, name="img")
    assert widget.load_checkpoint(checkpoint)
    qtbot.waitUntil(lambda: "img DDU-Net labels" in widget.viewer.layers, timeout=5_000)
    prebuilt = widget.viewer.layers["img DDU-Net labels"]
    assert not prebuilt.visible
    inserted: list = []
    widget.viewer.layers.events.inserted.connect(lambda event: inserted.append(event.value))
    assert widget.run() is not None
    assert inserted == [] and widget.labels_layer is prebuilt and prebuilt.visible
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=60_000)
    assert not widget.controller.result.cancelled
    np.testing.assert_array_equal(np.asarray(prebuilt.data), widget.controller.result.labels)
