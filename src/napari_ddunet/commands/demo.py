"""``napari-ddunet demo``: napari with a sample image, its demo model loaded and the grid drawn, ready to Run.

Default: NASA Blue Marble with the bundled DDU-Net trained on it. ``--screenshot PATH`` saves the
window once it is set up and exits (used by the tests and for the README picture); ``--no-run``
sets everything up and exits without entering the event loop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_ddunet.core.errors import DDUNetError

PLUGIN = "napari-ddunet"
WIDGET = "DDU-Net segmentation"


class DemoError(DDUNetError):
    """The demo cannot start: a missing sample data package or model."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from napari_ddunet.core.data.samples import SAMPLE_MODELS

    p = subparsers.add_parser(
        "demo",
        help="open napari with the Blue Marble sample and its demo model, ready to press Run",
        description="Open napari with a sample image, the demo model trained for it and the grid, ready to Run.",
    )
    p.add_argument("--sample", choices=sorted(SAMPLE_MODELS), default="bluemarble", help="which sample to open")
    p.add_argument("--model", help="checkpoint file or bundled model name (default: the one trained for the sample)")
    p.add_argument("--screenshot", type=Path, metavar="PATH", help="save a PNG of the window to PATH and exit")
    p.add_argument("--no-run", action="store_true", help="set up the viewer, then exit without the event loop")
    p.add_argument("--segment", action="store_true",
                   help="press Run for you: segment the whole image before the screenshot / the event loop")
    p.add_argument("--compare", action="store_true",
                   help="press 'Compare without communication' for you: the view again with the exchange switched "
                        "off, shown beside the image")
    p.set_defaults(run=run)
    return p


def resolve_model(sample: str, model: str | None) -> Path:
    """The checkpoint to load: a file path, a bundled name, or the sample's own demo model."""
    from napari_ddunet.core.checkpoints.bundled import bundled_models
    from napari_ddunet.core.data.samples import SAMPLE_MODELS

    bundled = bundled_models()
    name = model or SAMPLE_MODELS[sample]
    if Path(name).suffix == ".pt" or Path(name).is_file():
        if not Path(name).is_file():
            raise DemoError(f"checkpoint {name} does not exist")
        return Path(name)
    if name not in bundled:
        known = ", ".join(bundled) or "none"
        raise DemoError(
            f"the demo model {name!r} is not installed (bundled models found: {known}); "
            "install from a source checkout with pip install -e '.[samples]'"
        )
    return bundled[name]


def check_sample(sample: str) -> None:
    """Fail with one line, before any window opens, when the sample's data is not installed."""
    if sample == "bluemarble":
        from napari_ddunet.core.data import bluemarble

        bluemarble.data_dir()


def setup_viewer(viewer, sample: str, checkpoint: Path):
    """Open the sample in ``viewer``, dock our widget, load ``checkpoint`` and draw the grid; returns the widget."""
    viewer.open_sample(PLUGIN, sample)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    images = [layer for layer in viewer.layers if layer.metadata.get("ddunet_sample") == sample
              and layer.__class__.__name__ == "Image"]
    if images:
        widget.form.image.value = images[0]
    if not widget.load_checkpoint(checkpoint, quiet=True):
        raise DemoError(f"cannot load the demo model {checkpoint}")
    widget.form.show_grid.value = True
    widget.draw_grid()
    viewer.reset_view()
    if sample == "bluemarble" and images:
        _show_lake(viewer, images[0])
    elif sample == "synthetic_huge":
        _show_canvas_centre(viewer)
    return widget


def press_run(widget, timeout_s: float = 3600.0) -> None:
    """Segment the whole image as the Run button would, and wait for the result (for --segment)."""
    widget.form.current_view_only.value = False
    widget.run_blocking(timeout_s=timeout_s)


def press_compare(widget, timeout_s: float = 3600.0) -> None:
    """Rerun the view with the exchange switched off, as 'Compare without communication' would (for --compare)."""
    widget.run_blocking(kind="compare", region=widget.current_view_region(), timeout_s=timeout_s)


def _show_canvas_centre(viewer) -> None:
    """Zoom onto about 24 x 24 subdomains in the middle of the gigapixel canvas (only those chunks render)."""
    from napari_ddunet.core.data.samples import HUGE_SIZE
    from napari_ddunet.plugin.live import camera_of

    camera = camera_of(viewer)
    camera.center = (HUGE_SIZE / 2.0, HUGE_SIZE / 2.0)
    camera.zoom = camera.zoom * HUGE_SIZE / 768.0


def _show_lake(viewer, image_layer) -> None:
    """Zoom onto the Caspian Sea (held out from training): lake against ocean is what the exchange decides there."""
    from napari_ddunet.core.data.bluemarble import CASPIAN_VIEW, box_pixels
    from napari_ddunet.plugin.live import camera_of
    from napari_ddunet.plugin.widget.dock import image_shape

    height, width = image_shape(image_layer)[:2]
    top, bottom, left, right = box_pixels((height, width), CASPIAN_VIEW)
    camera = camera_of(viewer)  # reset_view has fitted the whole globe
    camera.center = ((top + bottom) / 2.0, (left + right) / 2.0)
    camera.zoom = camera.zoom * 0.9 * min(height / (bottom - top), width / (right - left))


def run(args: argparse.Namespace) -> int:
    checkpoint = resolve_model(args.sample, args.model)
    check_sample(args.sample)
    if args.screenshot is not None and args.screenshot.suffix.lower() != ".png":
        raise DemoError(f"--screenshot must name a .png file, got {args.screenshot}")
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-ddunet demo")
    viewer.window.set_geometry(0, 0, 1600, 1000)
    try:
        widget = setup_viewer(viewer, args.sample, checkpoint)
        if args.segment:
            press_run(widget)
        if args.compare:
            press_compare(widget)
        if args.screenshot is None and not args.no_run:
            napari.run()
            return 0
        for _ in range(5):
            QApplication.processEvents()
        if args.screenshot is not None:
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            viewer.window.screenshot(str(args.screenshot), canvas_only=False)
            print(f"screenshot saved to {args.screenshot}")
    finally:
        if args.screenshot is not None or args.no_run:
            viewer.close()
    return 0
