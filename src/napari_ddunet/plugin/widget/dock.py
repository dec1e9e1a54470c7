"""The DDU-Net dock widget: the form, the run controller, the model card, the grid overlay and the
result layers, wired together.

No inference happens here: the engine runs in the controller's worker; this module turns the
controller's events into layers and a progress bar, and keeps the form in step with the viewer.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_ddunet.core.checkpoints.bundled import bundled_models
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.stack import layer_axes
from napari_ddunet.core.io.images import choose_bands
from napari_ddunet.core.io.layout import infer_channel_axis, yx_axes
from napari_ddunet.plugin import settings as _settings
from napari_ddunet.plugin.grid_layer import GRID_LAYER_NAME, grid_shape, remove_grid_layers, update_grid_layer
from napari_ddunet.plugin.live import SHORTEST_REFRESH_S, camera_of, expects_multiscale, visible_region
from napari_ddunet.plugin.trained_models import trained_models
from napari_ddunet.plugin.widget import results
from napari_ddunet.plugin.widget.controller import IN_MEMORY_PIXELS, RunController, RunRequest
from napari_ddunet.plugin.widget.form import CURRENT_PLANE, NO_MODEL, build_form, show_bands
from napari_ddunet.plugin.widget.live_display import LiveDisplay

logger = logging.getLogger(__name__)

#: Shortest spacing of the live refreshes (ms); a slow canvas spaces them further (plugin/live.RefreshPacer).
REFRESH_MS = int(SHORTEST_REFRESH_S * 1000)
#: Subdomain side on screen (pixels) from which the "(r, c)" index texts are shown.
MIN_INDEX_SCREEN_PX = 56


def _warm_up_layer_imports() -> None:
    """Import what the first Labels layer with a features table needs (pandas, ...) now, not mid-run."""
    from napari.layers import Labels

    Labels(np.zeros((1, 1), np.uint8), features={"index": [0], "class": ["background"]})


def _cancel_pending(controller: RunController, *_: Any) -> None:
    """Stop a run whose widget is gone (the dock was closed or the viewer quit)."""
    controller.cancel()


def _stop_listening(slot, *_: Any) -> None:
    """A closed widget no longer hears of newly trained models."""
    trained_models.added.disconnect(slot)


def known_models() -> dict[str, Path]:
    """The checkpoint list: the bundled models, then those trained in this session (training panel)."""
    return {**bundled_models(), **trained_models.models()}


def image_shape(layer) -> tuple[int, ...]:
    return tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)


#: Height of the scrolling model card: enough for its architecture and classes at a glance.
CARD_HEIGHT_PX = 300


class DDUNetWidget(QWidget):
    """Dock widget: ``form`` (magicgui), ``controller`` (runs), model card, buttons and progress."""

    #: Every engine ProgressEvent of a run, re-emitted on the GUI thread after the widget handled it.
    progressed = Signal(object)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = None
        self.checkpoint_path: Path | None = None
        self.labels_layer = None
        self._labels_target = None
        self._image = None
        self._stacked = False   # the chosen layer has t/z planes (see stack_axes)
        self.form = build_form(self._image_choices, list(known_models()), _settings.plugin_defaults())
        self.card = Label(value="No checkpoint loaded.")
        self.card.native.setWordWrap(True)
        # A card with full provenance is long: it scrolls instead of stretching the dock off the screen.
        self.card_box = Container(widgets=[self.card], labels=False, scrollable=True)
        self.card_box.native.setMinimumHeight(CARD_HEIGHT_PX)
        self.card_box.native.setMaximumHeight(CARD_HEIGHT_PX)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.progress.native.setTextVisible(False)
        self.status = Label(value="idle")
        self.features_button = PushButton(text="Show feature maps", enabled=False)
        self.compare_button = PushButton(text="Compare without communication", enabled=False)
        self.actions = Container(widgets=[
            self.card_box, self.run_button, self.cancel_button, self.progress, self.status,
            self.features_button, self.compare_button,
        ], labels=False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.actions.native)
        layout.addStretch(1)

        self.controller = RunController()  # not a Qt child: it outlives a closed dock until its run ends
        self.controller.started.connect(self._on_started)
        self.controller.progressed.connect(self._on_progress)
        self.controller.returned.connect(self._on_returned)
        self.controller.failed.connect(self._on_error)
        self.controller.finished.connect(self._on_finished)
        self.destroyed.connect(functools.partial(_cancel_pending, self.controller))
        trained_models.added.connect(self._on_model_trained)
        self.destroyed.connect(functools.partial(_stop_listening, self._on_model_trained))

        self._grid_timer = QTimer(self, singleShot=True, interval=60)
        self._grid_timer.timeout.connect(self.draw_grid)
        self.live = LiveDisplay(self._show_progress, self)
        self._prebuild_timer = QTimer(self, singleShot=True, interval=0)
        self._prebuild_timer.timeout.connect(self.prebuild_result_layer)

        form = self.form
        form.model.changed.connect(self._on_model_chosen)
        form.checkpoint.changed.connect(self._on_checkpoint_file)
        form.image.changed.connect(self._on_image_changed)
        for field in (form.channel_axis, form.subdomain_size, form.show_grid):
            field.changed.connect(self._schedule_grid)
        form.channel_axis.changed.connect(self._show_bands)
        form.channel_axis.changed.connect(self._show_planes)
        self.run_button.changed.connect(lambda: self.run())
        self.cancel_button.changed.connect(self.cancel)
        self.features_button.changed.connect(self.show_feature_maps)
        self.compare_button.changed.connect(self.compare_without_communication)
        camera_of(self.viewer).events.zoom.connect(self._update_index_visibility)
        layer_events = self.viewer.layers.events
        for event in (layer_events.inserted, layer_events.removed, layer_events.renamed):
            event.connect(self.reset_choices)
        _warm_up_layer_imports()
        remembered = form.checkpoint.value
        if remembered and Path(remembered).is_file():
            self.load_checkpoint(remembered, quiet=True, size_from_checkpoint=False)
        self.reset_choices()
        self._on_image_changed()

    # ------------------------------------------------------------ choices
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.metadata.get("ddunet_derived")]

    def reset_choices(self, *_: Any) -> None:
        """Keep the image combo in step with the viewer (layers added, removed, renamed, in viewer order).

        magicgui keeps the items it already has and appends new ones; when that order is not the viewer's
        (after a rename) the items are rebuilt, the chosen layer kept without a change event.
        """
        field = self.form.image
        field.reset_choices()
        wanted = [name for name, _ in self._image_choices()]
        if [field.native.itemText(i) for i in range(field.native.count())] != wanted:
            chosen = field.value
            with field.changed.blocked():
                field.choices = ()
                field.reset_choices()
                if chosen in field.choices:
                    field.value = chosen
        self._update_buttons()

    def image_layer(self):
        return self.form.image.value

    # --------------------------------------------------------- checkpoint
    def _on_model_chosen(self, name: str) -> None:
        models = known_models()
        if name != NO_MODEL and name in models:
            self.load_checkpoint(models[name])

    def _on_model_trained(self, name: str, path: Path) -> None:
        """A model the training panel just trained: listed, and loaded with its card unless a run is in flight."""
        field = self.form.model
        if name not in field.choices:
            with field.changed.blocked():
                field.choices = [*field.choices, name]
        if not self.controller.running:
            self.load_checkpoint(path)

    def _on_checkpoint_file(self, path: Path) -> None:
        if path and Path(path).is_file() and Path(path) != self.checkpoint_path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str | Path, *, quiet: bool = False, size_from_checkpoint: bool = True) -> bool:
        """Load a checkpoint and show its card; a bad file becomes a notification, never a traceback."""
        from napari_ddunet.core.checkpoints.card import build_model_card, render_html
        from napari_ddunet.core.checkpoints.format import load_checkpoint

        try:
            model = load_checkpoint(path)
        except DDUNetError as error:
            if not quiet:
                show_error(f"Cannot load checkpoint: {error}")
            return False
        except (OSError, RuntimeError) as error:
            if not quiet:
                show_error(f"Cannot load checkpoint {path}: {error}")
            return False
        self.model, self.checkpoint_path = model, Path(path)
        self.card.value = render_html(build_model_card(model, path))
        if size_from_checkpoint and model.info.subdomain_size:
            self.form.subdomain_size.value = tuple(int(s) for s in model.info.subdomain_size)
        if self.form.checkpoint.value != self.checkpoint_path:
            self.form.checkpoint.value = self.checkpoint_path
        self._show_model_name(self.checkpoint_path)
        self._guess_channel_axis()
        self._update_buttons()
        self._schedule_grid()
        self._prebuild_timer.start()
        return True

    def _show_model_name(self, path: Path) -> None:
        """The model combo names the bundled model a path loads (or says none is chosen), without reloading it."""
        name = next((name for name, file in known_models().items() if Path(file).resolve() == path.resolve()),
                    NO_MODEL)
        if name in self.form.model.choices and self.form.model.value != name:
            with self.form.model.changed.blocked():
                self.form.model.value = name

    # -------------------------------------------------------------- image
    def _on_image_changed(self, *_: Any) -> None:
        """A new image: its own channel axis and no output path (an output belongs to one image)."""
        layer = self.image_layer()
        if layer is self._image:
            return
        self._image = layer
        self.form.output.value = ""
        self._preselect_model(layer)
        self._guess_channel_axis()
        self._schedule_grid()
        self._update_buttons()
        self._prebuild_timer.start()

    def _preselect_model(self, layer) -> None:
        """Load the bundled model a sample layer names (``layer.metadata``) when a new image is chosen."""
        from napari_ddunet.core.data.samples import recommended_model

        stem = None if layer is None else recommended_model(layer.metadata)
        bundled = bundled_models() if stem is not None else {}
        if stem in bundled and (self.checkpoint_path is None or self.checkpoint_path.stem != stem):
            self.load_checkpoint(bundled[stem], quiet=True)

    def _guess_channel_axis(self) -> None:
        layer = self.image_layer()
        choices: list[tuple[str, Any]] = [("none", None)]
        guess = None
        if layer is not None:
            shape = image_shape(layer)
            choices += [(f"{axis} (size {size})", axis) for axis, size in enumerate(shape)]
            in_channels = self.model.config.in_channels if self.model is not None else None
            rgb = bool(getattr(layer, "rgb", False))
            guess = infer_channel_axis(shape, rgb=rgb, in_channels=in_channels)
            if guess is not None and in_channels == 1 and not rgb and guess < len(shape) - 1 and shape[guess] > 1:
                guess = None   # a one-band model on an axis napari shows as a slider: planes, not bands
        field = self.form.channel_axis
        with field.changed.blocked():
            field.choices = choices
            field.value = guess
        self._show_bands()
        self._show_planes()
        self._schedule_grid()

    def _show_planes(self, *_: Any) -> None:
        """The "Planes" choice (whole stack or current plane) only for a layer with t/z sliders."""
        layer = self.image_layer()
        try:
            self._stacked = layer is not None and self.stack_axes(layer) is not None
        except DDUNetError:
            self._stacked = False
        self.form.planes.visible = self._stacked
        self._update_buttons()

    def stack_axes(self, layer) -> str | None:
        """The engine's ``axes`` for a layer with planes ("ZYX", "TCZYX"), None for a 2D one."""
        labels = getattr(layer, "axis_labels", None)
        return layer_axes(image_shape(layer), self.form.channel_axis.value, labels)

    def result_axes(self, layer) -> tuple[int, ...]:
        """The layer's axes the labels have: a stack's planes (those with more than one), then y and x."""
        axes, shape = self.stack_axes(layer), image_shape(layer)
        lead = () if axes is None else tuple(i for i, a in enumerate(axes) if a in "TZ" and shape[i] > 1)
        return (*lead, *self.yx(layer))

    def current_plane(self, layer, lead: tuple[int, ...]) -> tuple[int, ...]:
        """The plane the viewer shows of ``layer``: its dims position along the leading axes ``lead``."""
        point = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
        shape = image_shape(layer)
        return tuple(int(np.clip(round(point[i]), 0, shape[i] - 1)) for i in lead)

    def _bands_of(self, layer) -> int | None:
        """Bands on the chosen channel axis of ``layer`` (None without one)."""
        axis = self.form.channel_axis.value
        return None if layer is None or axis is None else int(image_shape(layer)[axis])

    def _show_bands(self, *_: Any) -> None:
        """The band picker for the image's channel axis, reset to the model's training bands or first bands."""
        in_channels = self.model.config.in_channels if self.model is not None else None
        trained = self.model.info.training_args.get("channels") if self.model is not None else None
        show_bands(self.form, self._bands_of(self.image_layer()), in_channels,
                   trained if isinstance(trained, list) else None)

    def yx(self, layer) -> tuple[int, int]:
        return yx_axes(len(image_shape(layer)), self.form.channel_axis.value)

    def current_view_region(self) -> tuple[int, int, int, int] | None:
        layer = self.image_layer()
        return None if layer is None else visible_region(self.viewer, layer, self.yx(layer))

    # --------------------------------------------------------------- grid
    def _schedule_grid(self, *_: Any) -> None:
        self._grid_timer.start()

    def draw_grid(self) -> None:
        """Redraw the grid over the current image (or remove it when hidden or nothing is chosen)."""
        layer = self.image_layer()
        ya, xa = self.yx(layer) if layer is not None and len(image_shape(layer)) >= 2 else (0, 0)
        # An RGB layer has one dimension fewer than its data: without its channel axis there is no grid.
        if layer is None or not self.form.show_grid.value or max(ya, xa) >= layer.ndim:
            remove_grid_layers(self.viewer)
            self.form.grid.value = ""
            return
        shape = image_shape(layer)
        size = tuple(self.form.subdomain_size.value)
        update_grid_layer(self.viewer, layer, size, (ya, xa))
        rows, cols = grid_shape((shape[ya], shape[xa]), size)
        self.form.grid.value = f"{rows} x {cols} subdomains on {shape[ya]} x {shape[xa]} px"
        self._update_index_visibility()
        self.viewer.layers.selection.active = layer

    def _update_index_visibility(self, *_: Any) -> None:
        """Show the "(r, c)" texts only when a subdomain is wide enough on screen to hold one."""
        name = GRID_LAYER_NAME + " indices"
        layer = self.image_layer()
        if name not in self.viewer.layers or layer is None:
            return
        ya, xa = self.yx(layer)
        pixels = np.asarray(self.form.subdomain_size.value) * np.abs(np.asarray(layer.scale)[[ya, xa]])
        self.viewer.layers[name].visible = bool(pixels.min() * camera_of(self.viewer).zoom >= MIN_INDEX_SCREEN_PX)

    # ---------------------------------------------------------------- run
    def _expects_multiscale(self, request_output: str | None, run_yx: tuple[int, int]) -> bool:
        return expects_multiscale(run_yx, tuple(self.form.subdomain_size.value), self.model.config.downsampling,
                                  request_output)

    def prebuild_result_layer(self) -> None:
        """Build the chosen image's result layer now, hidden, so that the Run click only reuses it.

        Building a Labels layer's visuals blocks the GUI for about half a second (docs/benchmarks.md,
        bench --gui); here that happens while the user is choosing, not after the click.
        """
        layer = self.image_layer()
        if layer is None or self.model is None or self.controller.running:
            return
        if any(other.name == results.labels_name(layer) for other in self.viewer.layers):
            return
        run_yx, shape = self.yx(layer), image_shape(layer)
        if max(run_yx) >= min(layer.ndim, len(shape)):
            return
        try:
            axes = self.result_axes(layer)
        except DDUNetError:
            return
        yx = (shape[run_yx[0]], shape[run_yx[1]])
        output = self.form.output.value.strip() or (
            "store" if yx[0] * yx[1] > IN_MEMORY_PIXELS else None)
        self.labels_layer = results.prepare_labels_layer(
            self.viewer, layer, axes, self.model.info, self._expects_multiscale(output, yx), visible=False
        )

    def _update_buttons(self) -> None:
        running = self.controller.running
        ready = self.model is not None and self.image_layer() is not None
        self.run_button.enabled = ready and not running
        self.cancel_button.enabled = running and not self.controller.cancelling
        result = self.controller.result
        self.features_button.enabled = result is not None and result.bottleneck is not None and not running
        # the side-by-side comparison is of a 2D image; a stack's planes are compared one by one in 2D
        self.compare_button.enabled = (ready and not running and bool(self.model.config.comm_features)
                                       and not self._stacked)

    def request(self, *, kind: str = "main", region: tuple[int, int, int, int] | None = None) -> RunRequest | None:
        """The run the form describes (None, with a notification, when it cannot start)."""
        layer = self.image_layer()
        if self.model is None or layer is None:
            show_info("Choose a checkpoint and an image layer first.")
            return None
        devices = tuple(self.form.devices.value)
        if not devices:
            show_error("Tick at least one device.")
            return None
        if kind == "main" and region is None and self.form.current_view_only.value:
            region = self.current_view_region()
        have = self._bands_of(layer)
        channels = None if have is None else tuple(int(band) for band in self.form.bands.value)
        if channels is not None:
            try:
                choose_bands(have, self.model.config.in_channels, channels)
            except DDUNetError as error:
                show_error(str(error))
                return None
        shape = image_shape(layer)
        ya, xa = self.yx(layer)
        try:
            axes, placed = self.stack_axes(layer), self.result_axes(layer)
        except DDUNetError as error:
            show_error(str(error))
            return None
        lead = placed[:-2]
        planes = (self.current_plane(layer, lead),) if axes and self.form.planes.value == CURRENT_PLANE else None
        names = [axes[i].lower() for i in lead] + ["y", "x"] if axes else ["y", "x"]
        return RunRequest(
            image=layer.data[0] if layer.multiscale else layer.data,
            model=self.model,
            image_yx=(shape[ya], shape[xa]),
            subdomain_size=tuple(self.form.subdomain_size.value),
            devices=devices,
            channel_axis=self.form.channel_axis.value,
            channels=channels,
            output=(self.form.output.value.strip() or None) if kind == "main" else None,
            features=kind == "main" and self.form.features.value and axes is None,
            region=region,
            memory_budget_mb=int(self.form.memory_budget_mb.value),
            kind=kind,
            calibration=results.layer_calibration(layer, placed, names),
            axes=axes,
            planes=planes,
            plane_count=int(np.prod([shape[i] for i in lead])),
            normalization=self.form.normalization.value,
        )

    def run(self, *, kind: str = "main", region: tuple[int, int, int, int] | None = None) -> RunRequest | None:
        """Start the run the form describes; returns its request (None when it could not start)."""
        if self.controller.running:
            return None
        request = self.request(kind=kind, region=region)
        if request is None or not self.controller.run(request):
            return None
        return request

    def run_blocking(self, *, kind: str = "main", region=None, timeout_s: float = 3600.0):
        """:meth:`run` and wait for its result (scripts, ``napari-ddunet demo``, tests)."""
        request = self.request(kind=kind, region=region)
        if request is None:
            return None
        return self.controller.run_blocking(request, timeout_s=timeout_s)

    def cancel(self, *_: Any) -> None:
        """Ask the engine to stop at its next batch; it returns a result marked cancelled."""
        if self.controller.running:
            self.controller.cancel()
            self.cancel_button.enabled = False
            self.status.value = "cancelling..."

    def _on_started(self, request: RunRequest) -> None:
        self._run_layer, self._run_yx = self.image_layer(), self.yx(self.image_layer())
        self._run_axes = self.result_axes(self._run_layer)
        self._labels_target = None
        if request.kind == "main":
            multiscale = self._expects_multiscale(
                request.output, request.run_yx() if request.region is not None else request.image_yx
            )
            self.labels_layer = results.prepare_labels_layer(
                self.viewer, self._run_layer, self._run_axes, self.model.info, multiscale
            )
        self.progress.max = 0  # busy until the first event says how much there is
        self.status.value = "starting..."
        self._update_buttons()
        self.live.start(self.labels_layer)

    def _on_progress(self, request: RunRequest, event) -> None:
        if event.outputs and self._labels_target is None and "labels" in event.outputs:
            self._labels_target = event.outputs["labels"]
            if request.kind == "main":
                self.labels_layer = results.attach_labels(
                    self.viewer, self.labels_layer, self._run_layer, self._run_axes, self.model.info,
                    self._labels_target, request.output,
                )
                self.live.retarget(self.labels_layer)
        self.live.update(event)
        self.progressed.emit(event)

    def _show_progress(self, event) -> None:
        """The progress bar and status line for one engine event (called at the live display's pace)."""
        total = max(int(event.total), 1)
        self.progress.max = total
        self.progress.value = min(int(event.done), total)
        stopping = "cancelling... " if self.controller.cancelling else ""
        plane = "" if event.plane is None else f" (plane {', '.join(map(str, event.plane))})"
        self.status.value = f"{stopping}{event.phase}{plane}: {event.done}/{event.total}"

    def _on_returned(self, request: RunRequest, result) -> None:
        self.live.flush()  # the last events first, then the final status
        if request.kind != "main":
            results.add_comparison(
                self.viewer, self._run_layer, self._run_yx, image_shape(self._run_layer), self.model.info,
                result, request.output,
            )
        state = "cancelled" if result.cancelled else "done"
        self.status.value = f"{state} ({result.schedule}, {result.grid[0]}x{result.grid[1]} grid)"
        if not result.cancelled:
            self.progress.max = max(self.progress.max, 1)
            self.progress.value = self.progress.max

    def _on_error(self, request: RunRequest, error: BaseException) -> None:
        if isinstance(error, DDUNetError):
            show_error(str(error))
        else:
            logger.error("DDU-Net run failed", exc_info=error)
            show_error(f"DDU-Net run failed: {type(error).__name__}: {error}")
        self.progress.max = 1
        self.progress.value = 0
        self.status.value = "failed"

    def _on_finished(self, request: RunRequest) -> None:
        self.live.stop()  # the final refresh, once
        self._update_buttons()

    # --------------------------------------------------- feature explorer
    def show_feature_maps(self, *_: Any) -> list:
        """Add the bottleneck maps before and after communication as image layers over the image."""
        result = self.controller.result
        if result is None or result.bottleneck is None:
            show_info("Run with 'Keep feature maps' ticked first.")
            return []
        return results.add_feature_maps(
            self.viewer, self._run_layer, self._run_yx, result, self.model.config.downsampling
        )

    def compare_without_communication(self, *_: Any) -> RunRequest | None:
        """Rerun the visible region with the exchange off; shown to the right of the image."""
        if self.image_layer() is None or self.model is None:
            return None
        return self.run(kind="compare", region=self.current_view_region())

    def wait(self, timeout_ms: int = 60_000) -> None:
        """Block (processing events) until the current run ends; for scripts and tests."""
        self.controller.wait(timeout_ms / 1000)

    def closeEvent(self, event) -> None:
        self.cancel()
        super().closeEvent(event)
