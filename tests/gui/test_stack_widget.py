"""The widget on stacks: the current plane or the whole stack, labels that scroll with the image."""

from __future__ import annotations

import numpy as np
import zarr

from napari_ddunet import load_checkpoint, segment
from napari_ddunet.plugin.widget.form import CURRENT_PLANE, WHOLE_STACK

TIMEOUT = 60_000


def _stack(shape: tuple[int, ...]) -> np.ndarray:
    """Planes cut from skimage's camera and coins pictures (real images), in [0, 1]."""
    from skimage import data

    pictures = [data.camera(), data.coins()]
    *lead, height, width = shape
    planes = [pictures[i % 2][5 * i:5 * i + height, 9 * i:9 * i + width] / 255.0 for i in range(int(np.prod(lead)))]
    return np.stack(planes).reshape(shape).astype(np.float32)


def _ready(widget, checkpoint, data, **layer_kwargs):
    layer = widget.viewer.add_image(data, name="img", **layer_kwargs)
    assert widget.load_checkpoint(checkpoint)
    widget.form.devices.value = ["cpu"]
    widget.form.features.value = False
    return layer


def _run(widget, qtbot):
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=TIMEOUT)


def test_whole_z_stack_gives_labels_with_its_z_axis(widget, qtbot, checkpoint, tmp_path):
    stack = _stack((3, 64, 96))
    _ready(widget, checkpoint, stack, scale=(2.5, 0.5, 0.5))
    assert not widget.form.planes.native.isHidden() and widget.form.channel_axis.value is None
    widget.form.planes.value = WHOLE_STACK
    widget.form.output.value = str(tmp_path / "out.zarr")
    _run(widget, qtbot)
    assert widget.status.value.startswith("done")
    layer = widget.viewer.layers["img DDU-Net labels"]
    data = layer.data[0] if layer.multiscale else layer.data
    model = load_checkpoint(checkpoint)
    expected = np.stack([segment(plane, model, subdomain_size=(32, 32)) for plane in stack])
    assert data.shape == (3, 64, 96)
    np.testing.assert_array_equal(np.asarray(data), expected)
    assert list(layer.scale) == [2.5, 0.5, 0.5]   # scrolls with the image along z
    entry = dict(zarr.open_group(str(tmp_path / "out.zarr" / "labels")).attrs)["ome"]["multiscales"][0]
    assert entry["axes"][0]["name"] == "z"
    assert entry["datasets"][0]["coordinateTransformations"][0]["scale"][:1] == [2.5]


def test_current_plane_segments_only_the_plane_the_viewer_shows(widget, qtbot, checkpoint):
    stack = _stack((2, 3, 64, 64))          # T, Z
    _ready(widget, checkpoint, stack)
    widget.form.planes.value = CURRENT_PLANE
    widget.viewer.dims.set_current_step(0, 1)
    widget.viewer.dims.set_current_step(1, 2)
    _run(widget, qtbot)
    layer = widget.viewer.layers["img DDU-Net labels"]
    data = np.asarray(layer.data)
    assert data.shape == (2, 3, 64, 64)
    expected = segment(stack[1, 2], load_checkpoint(checkpoint), subdomain_size=(32, 32))
    np.testing.assert_array_equal(data[1, 2], expected)
    assert not data[0].any() and not data[1, :2].any()
    assert widget.controller.result.grid == (2, 2) and widget.progress.value == 4


def test_two_d_images_have_no_planes_choice(widget, checkpoint):
    _ready(widget, checkpoint, _stack((1, 64, 64))[0])
    assert widget.form.planes.native.isHidden() and widget.compare_button.enabled
    assert widget.stack_axes(widget.image_layer()) is None
