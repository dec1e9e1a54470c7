"""Runs from the widget: same labels as segment(), zarr output, Cancel, feature maps, comparison, view-only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_ddunet import load_checkpoint, segment
from napari_ddunet.plugin.live import camera_of

TIMEOUT = 60_000


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return rng.random((96, 160)).astype(np.float32)


def _ready(widget, checkpoint, image, **layer_kwargs):
    layer = widget.viewer.add_image(image, name="img", **layer_kwargs)
    assert widget.load_checkpoint(checkpoint)
    widget.form.devices.value = ["cpu"]
    return layer


def _run(widget, qtbot, **kwargs):
    assert widget.run(**kwargs) is not None
    assert widget.controller.running
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=TIMEOUT)


def test_full_run_gives_the_labels_of_segment(widget, qtbot, checkpoint, image):
    _ready(widget, checkpoint, image)
    widget.form.features.value = False
    _run(widget, qtbot)
    layer = widget.viewer.layers["img DDU-Net labels"]
    expected = segment(image, load_checkpoint(checkpoint), subdomain_size=(32, 32))
    np.testing.assert_array_equal(np.asarray(layer.data), expected)
    assert widget.status.value.startswith("done")
    assert widget.progress.value == widget.progress.max
    assert layer.colormap.map(2)[..., :3].ravel().tolist() == pytest.approx([0.3, 0.6, 1.0])
    assert list(layer.features["class"]) == ["background", "line", "circle"]
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert not widget.features_button.enabled  # no feature maps asked for


def test_run_into_a_zarr_store_shows_its_pyramid(widget, qtbot, checkpoint_factory, tmp_path):
    image = np.random.default_rng(2).random((256, 256)).astype(np.float32)
    checkpoint = checkpoint_factory("m.pt", subdomain=(64, 64))
    _ready(widget, checkpoint, image)
    widget.form.output.value = str(tmp_path / "out.zarr")
    _run(widget, qtbot)
    layer = widget.viewer.layers["img DDU-Net labels"]
    assert layer.multiscale and len(layer.data) >= 2
    expected = segment(image, load_checkpoint(checkpoint))
    np.testing.assert_array_equal(np.asarray(layer.data[0]), expected)
    assert widget.controller.result.output == str(tmp_path / "out.zarr")


def test_bad_run_settings_are_a_notification(widget, qtbot, checkpoint, image, errors):
    _ready(widget, checkpoint, image)
    widget.form.subdomain_size.value = (30, 32)  # depth 2: sides must be multiples of 4
    _run(widget, qtbot)
    assert len(errors) == 1 and "multiple of 2**depth = 4" in errors[0]
    assert widget.status.value == "failed" and widget.run_button.enabled


def test_cancel_stops_a_run(widget, qtbot, checkpoint):
    image = np.random.default_rng(3).random((1024, 1024)).astype(np.float32)
    _ready(widget, checkpoint, image)
    widget.form.features.value = False
    widget.form.subdomain_size.value = (32, 32)  # 1024 subdomains
    widget.form.memory_budget_mb.value = 64  # a small budget: the engine works row by row and checks Cancel often
    events = []

    def on_event(event):
        events.append(event)
        if event.phase == "write" and not widget.controller.cancelling:  # Cancel once subdomains arrive
            widget.controller.cancel()

    widget.progressed.connect(on_event)
    widget.run()
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=TIMEOUT)
    assert widget.controller.result.cancelled
    assert events[-1].phase == "cancelled" and events[-1].done < events[-1].total
    assert widget.status.value.startswith("cancelled")
    assert widget.run_button.enabled


def test_feature_maps_are_aligned_over_the_image(widget, qtbot, checkpoint, image):
    _ready(widget, checkpoint, image, scale=(0.5, 2.0), translate=(10.0, -4.0))
    _run(widget, qtbot)
    assert widget.features_button.enabled
    before, after = widget.show_feature_maps()
    assert before.data.shape == after.data.shape == (8, 96 // 4, 160 // 4)  # (F, H / 2**D, W / 2**D)
    for layer in (before, after):
        np.testing.assert_allclose(layer.scale, (1.0, 0.5 * 4, 2.0 * 4))
        np.testing.assert_allclose(layer.translate, (0.0, 10.0 + 1.5 * 0.5, -4.0 + 1.5 * 2.0))
    # bottleneck pixel (i, j) sits over the centre of image block rows 4i..4i+3, cols 4j..4j+3
    img = widget.viewer.layers["img"]
    centre = img.data_to_world((4 * 5 + 1.5, 4 * 7 + 1.5))
    np.testing.assert_allclose(after.data_to_world((3, 5, 7))[1:], centre)
    assert widget.viewer.dims.nsteps[0] == 8  # the channel slider
    assert not before.visible and after.visible


def test_compare_without_communication_side_by_side(widget, qtbot, checkpoint, image):
    _ready(widget, checkpoint, image)
    widget.form.features.value = False
    _run(widget, qtbot)
    assert widget.compare_without_communication() is not None
    qtbot.waitUntil(lambda: not widget.controller.running, timeout=TIMEOUT)
    viewer = widget.viewer
    nocomm = viewer.layers["img labels without communication"]
    copy = viewer.layers["img (no communication view)"]
    assert nocomm.translate[1] == copy.translate[1] > 160  # to the right of the image
    assert nocomm.translate[0] == copy.translate[0] == 0
    model = load_checkpoint(checkpoint)
    np.testing.assert_array_equal(np.asarray(nocomm.data), segment(image, model, communicate=False))
    np.testing.assert_array_equal(np.asarray(viewer.layers["img DDU-Net labels"].data), segment(image, model))
    assert widget.form.image.value is viewer.layers["img"]  # the copy is not offered as an input
    assert [layer.name for layer in widget.form.image.choices] == ["img"]


def test_current_view_only_runs_the_visible_subdomains(widget, qtbot, checkpoint_factory):
    image = np.random.default_rng(4).random((256, 384)).astype(np.float32)
    checkpoint = checkpoint_factory("m.pt", subdomain=(32, 32))
    _ready(widget, checkpoint, image)
    viewer = widget.viewer
    camera = camera_of(viewer)
    camera.center = (100.0, 200.0)
    camera.zoom = 8.0
    region = widget.current_view_region()
    assert region is not None
    y0, y1, x0, x1 = region
    half = np.asarray(viewer.canvas.size) / 2 / 8.0
    assert abs((y0 + y1) / 2 - 100) <= 1 and abs((y1 - y0) - 2 * half[0]) <= 2
    assert abs((x0 + x1) / 2 - 200) <= 1 and abs((x1 - x0) - 2 * half[1]) <= 2
    widget.form.current_view_only.value = True
    widget.form.features.value = False
    _run(widget, qtbot)
    expected = segment(image, load_checkpoint(checkpoint), region=region)
    np.testing.assert_array_equal(np.asarray(viewer.layers["img DDU-Net labels"].data), expected)
    viewer.reset_view()
    assert widget.current_view_region() is None


def test_closing_the_widget_cancels_its_run(make_napari_viewer, qtbot, checkpoint):
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = make_napari_viewer()
    widget = DDUNetWidget(viewer)
    _ready(widget, checkpoint, np.random.default_rng(6).random((1024, 1024)).astype(np.float32))
    widget.form.subdomain_size.value = (32, 32)
    widget.form.memory_budget_mb.value = 64   # small: row by row (1 MiB is below what any run needs)
    widget.form.features.value = False
    returned = []
    widget.run()
    widget.controller.returned.connect(lambda request, result: returned.append(result))
    widget.deleteLater()
    qtbot.waitUntil(lambda: bool(returned), timeout=TIMEOUT)
    assert returned[0].cancelled


def test_temporary_stores_are_removed_when_python_exits():
    """Big images without an Output path go to a temporary store: it must not outlive the session."""
    script = ("import sys, zarr\n"
              "from napari_ddunet.plugin.widget.controller import temporary_store\n"
              "path = temporary_store()\n"
              "zarr.create_array(path, shape=(4, 4), dtype='u1')\n"
              "print(path)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    store = Path(done.stdout.strip())
    assert store.name == "labels.zarr" and store.parent.name.startswith("napari-ddunet-")
    assert not store.parent.exists()
