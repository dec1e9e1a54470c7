"""The npe2 contributions work through napari itself: dock widget from the Plugins menu, writer."""

from __future__ import annotations

import numpy as np


def test_dock_widget_from_the_plugin_menu_runs(make_napari_viewer, qtbot, checkpoint):
    """napari hands plugin widgets a public-only proxy of the viewer: the whole flow must work through it."""
    from napari_ddunet import load_checkpoint, segment
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-ddunet", "DDU-Net segmentation")
    assert isinstance(widget, DDUNetWidget)
    image = np.random.default_rng(5).random((64, 96)).astype(np.float32)
    viewer.add_image(image, name="img")
    assert widget.load_checkpoint(checkpoint)
    widget.form.devices.value = ["cpu"]
    qtbot.waitUntil(lambda: "DDU-Net subdomain grid" in viewer.layers)
    widget.run_blocking(timeout_s=60)
    expected = segment(image, load_checkpoint(checkpoint))
    np.testing.assert_array_equal(np.asarray(viewer.layers["img DDU-Net labels"].data), expected)
    assert len(widget.show_feature_maps()) == 2


def test_labels_layer_saves_through_napari(make_napari_viewer, tmp_path):
    from napari_ddunet.plugin.reader import read

    viewer = make_napari_viewer()
    labels = np.zeros((600, 560), np.uint8)
    labels[50:150, 20:200] = 2
    layer = viewer.add_labels(labels, name="seg")
    written = layer.save(str(tmp_path / "seg.ome.zarr"), plugin="napari-ddunet")
    assert written == [str(tmp_path / "seg.ome.zarr")]
    [(data, meta, kind)] = read(written[0])
    assert kind == "labels" and meta["multiscale"]
    np.testing.assert_array_equal(np.asarray(data[0]), labels)
