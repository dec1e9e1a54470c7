"""Smoke test: the viewer with the widget docked, after a run, renders to a non-blank screenshot."""

from __future__ import annotations

import numpy as np


def test_screenshot_after_a_run(make_napari_viewer, qtbot, checkpoint, tmp_path):
    from napari_ddunet.plugin.sample_data import make_two_circles
    from napari_ddunet.plugin.widget import DDUNetWidget

    viewer = make_napari_viewer(show=True)
    for data, meta, kind in make_two_circles():
        getattr(viewer, f"add_{kind}")(data, **meta)
    widget = DDUNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="DDU-Net")
    widget.load_checkpoint(checkpoint)
    widget.form.devices.value = ["cpu"]
    widget.form.subdomain_size.value = (64, 96)
    widget.run_blocking(timeout_s=60)
    widget.show_feature_maps()
    path = tmp_path / "viewer.png"
    shot = viewer.screenshot(str(path), canvas_only=False)
    assert path.stat().st_size > 10_000
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.shape[1] > 400
    assert shot[..., :3].std() > 10  # not one flat colour
    assert len(np.unique(shot[..., :3].reshape(-1, 3), axis=0)) > 100
