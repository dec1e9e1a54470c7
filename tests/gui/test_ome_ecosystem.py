"""Labels over their image in napari: a run on a 0.65 um/px layer keeps its scale, origin and units, and the
store it writes opens in napari (our reader and napari-ome-zarr) exactly over the OME-Zarr image."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_ddunet import segment
from napari_ddunet.core.io import ome

TIMEOUT = 60_000


def _extent(layer) -> np.ndarray:
    """World coordinates of the layer's first and last pixel centres."""
    shape = np.asarray(layer.data[0].shape if layer.multiscale else layer.data.shape)
    return np.array([layer.data_to_world(np.zeros(len(shape))), layer.data_to_world(shape - 1)])


def _ome_zarr(path, image: np.ndarray, pixel: float) -> str:
    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=image, chunks=(64, 64))
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in ("y", "x")]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [pixel, pixel]}]}]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": "nuclei", "axes": axes, "datasets": datasets}]}
    return str(path)


@pytest.fixture
def nuclei(realdata_fluorescence_uint16) -> np.ndarray:
    """A 96 x 160 crop of a real uint16 widefield image of HeLa nuclei."""
    return tifffile.imread(realdata_fluorescence_uint16)[250:346, 300:460]


def test_widget_run_keeps_the_layers_scale_and_units(widget, qtbot, checkpoint, nuclei, tmp_path):
    layer = widget.viewer.add_image(nuclei, name="img", scale=(0.65, 0.65), translate=(3.0, -2.0),
                                    units=("um", "um"))
    assert widget.load_checkpoint(checkpoint)
    widget.form.devices.value = ["cpu"]
    widget.form.output.value = str(tmp_path / "out.zarr")
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=TIMEOUT)
    labels = widget.viewer.layers["img DDU-Net labels"]
    np.testing.assert_allclose(_extent(labels), _extent(layer))
    assert [str(u) for u in labels.units] == ["micrometer", "micrometer"]
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["labels"]
    calibration = ome.calibration(ome.multiscales(dict(group.attrs)))
    assert calibration.scale == (0.65, 0.65) and calibration.translate == (3.0, -2.0)
    assert calibration.units == ("micrometer", "micrometer")


def test_store_from_a_065_um_ome_zarr_opens_over_the_image(make_napari_viewer, checkpoint, nuclei, tmp_path):
    image = _ome_zarr(tmp_path / "nuclei.ome.zarr", nuclei.astype(np.float32) / 1000, 0.65)
    segment(image, str(checkpoint), output=tmp_path / "out.zarr", subdomain_size=(32, 32))
    viewer = make_napari_viewer()
    [img] = viewer.open(image, plugin="napari-ddunet")
    [ours] = viewer.open(str(tmp_path / "out.zarr"), plugin="napari-ddunet")
    layers = viewer.open(str(tmp_path / "out.zarr"), plugin="napari-ome-zarr")
    [theirs] = [layer for layer in layers if layer.__class__.__name__ == "Labels"]
    np.testing.assert_allclose(img.scale, (0.65, 0.65))
    for labels in (ours, theirs):
        np.testing.assert_allclose(_extent(labels), _extent(img))
        assert [str(u) for u in labels.units] == ["micrometer", "micrometer"]
    assert theirs.visible and theirs.name.startswith("background-line-circle")
    np.testing.assert_allclose(theirs.colormap.map(2)[..., :3].ravel(), [0.3, 0.6, 1.0], atol=1 / 255)
    np.testing.assert_array_equal(np.asarray(theirs.data[0]), np.asarray(ours.data[0]))


def test_napari_writer_keeps_the_layers_placement(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((200, 260), np.uint8)
    labels[50:120, 30:200] = 1
    layer = viewer.add_labels(labels, name="seg", scale=(0.65, 0.65), translate=(4.0, 8.0), units=("um", "um"))
    [written] = layer.save(str(tmp_path / "seg.ome.zarr"), plugin="napari-ddunet")
    group = zarr.open_group(written, mode="r")["labels"]
    calibration = ome.calibration(ome.multiscales(dict(group.attrs)))
    assert calibration.scale == (0.65, 0.65) and calibration.translate == (4.0, 8.0)
    assert calibration.units == ("micrometer", "micrometer")
    [reopened] = viewer.open(written, plugin="napari-ddunet")
    np.testing.assert_allclose(_extent(reopened), _extent(layer))


def test_widget_segments_a_png_opened_in_napari(widget, qtbot, checkpoint_factory, realdata_aerial_rgb, tmp_path):
    from PIL import Image

    aerial = tifffile.imread(realdata_aerial_rgb)[:96, :128]
    Image.fromarray(aerial).save(tmp_path / "aerial.png")
    [layer] = widget.viewer.open(str(tmp_path / "aerial.png"))   # napari's own PNG reader
    checkpoint = checkpoint_factory("rgb.pt", in_channels=3)
    assert widget.load_checkpoint(checkpoint)
    widget.form.devices.value = ["cpu"]
    widget.form.image.value = layer
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=TIMEOUT)
    labels = widget.viewer.layers[f"{layer.name} DDU-Net labels"]
    expected = segment(str(tmp_path / "aerial.png"), str(checkpoint), subdomain_size=(32, 32))
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
