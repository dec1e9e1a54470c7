"""The DDU-Net dock widget: a thin Qt shell that wires a checkpoint, an image layer, devices and an
output together, runs :func:`napari_ddunet.core.inference.engine.segment_iter` in a napari worker thread and
turns its progress events into layers and a progress bar.

No inference happens here: everything numeric is the engine's. The GUI thread only creates layers,
refreshes them (throttled) and reacts to buttons, so the event loop stays responsive during a run.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.plugin import settings as _settings
from napari_ddunet.plugin.grid_layer import GRID_LAYER_NAME, update_grid_layer
from napari_ddunet.plugin.live import (
    coalesce_events,
    expects_multiscale,
    feature_layer_kwargs,
    label_colormap,
    labels_layer_data,
    visible_region,
)
from napari_ddunet.plugin.model_card import model_card_html

logger = logging.getLogger(__name__)

OPEN_FILE = "Open file..."
NO_MODEL = "(choose a checkpoint)"
#: Images with more pixels than this are written to a temporary zarr store instead of memory.
IN_MEMORY_PIXELS = 4096 * 4096
REFRESH_MS = 400
#: Subdomain side on screen (pixels) from which the "(r, c)" index texts are shown.
MIN_INDEX_SCREEN_PX = 56
#: Nice value of the worker thread (Linux): background work yields the CPU to the GUI thread.
WORKER_NICE = 10


def temporary_store() -> str:
    """A zarr path in a new temporary folder that is removed when Python exits.

    Its Labels layer reads from it for as long as the viewer lives, so it cannot go earlier.
    """
    folder = tempfile.mkdtemp(prefix="napari-ddunet-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(Path(folder) / "labels.zarr")


def available_devices() -> list[tuple[str, str]]:
    """(device string, label) for the CPU and every GPU torch can see."""
    import torch

    devices = [("cpu", "CPU")]
    for i in range(torch.cuda.device_count()):
        devices.append((f"cuda:{i}", f"cuda:{i} ({torch.cuda.get_device_name(i)})"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append(("mps", "Apple GPU (mps)"))
    return devices


def _lower_thread_priority() -> None:
    """Run this worker thread, and the threads the engine starts from it, at a lower CPU priority.

    On Linux the nice value is per thread and inherited by new threads, so the GUI thread keeps
    its share of a busy CPU and the viewer stays responsive during a CPU run. Elsewhere: no-op.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


def _cancel_pending(pending: dict[str, threading.Event | None], *_: Any) -> None:
    """Stop a run whose widget is gone (the dock was closed or the viewer quit)."""
    event = pending.get("cancel")
    if event is not None:
        event.set()


def _run_engine(image: Any, model: Any, **kwargs: Any):
    """The engine's generator, run at low priority, with its progress events thinned out for the GUI."""
    from napari_ddunet.core.inference.engine import segment_iter

    _lower_thread_priority()
    return (yield from coalesce_events(segment_iter(image, model, **kwargs)))


def _warm_up_layer_imports() -> None:
    """Import what the first Labels layer with a features table needs (pandas, ...), now rather than
    in the middle of a run, where it would freeze the GUI for about a second."""
    from napari.layers import Labels

    Labels(np.zeros((1, 1), np.uint8), features={"index": [0], "class": ["background"]})


def guess_channel_axis(shape: tuple[int, ...], rgb: bool, in_channels: int | None) -> int | None:
    """Which axis holds channels: the engine's rule (:func:`napari_ddunet.core.io.layout.infer_channel_axis`)."""
    from napari_ddunet.core.io.layout import infer_channel_axis

    return infer_channel_axis(shape, rgb=rgb, in_channels=in_channels)


def yx_axes(ndim: int, channel_axis: int | None) -> tuple[int, int]:
    """The last two axes that are not the channel axis."""
    spatial = [a for a in range(ndim) if a != channel_axis]
    return spatial[-2], spatial[-1]


class DDUNetWidget(QWidget):
    """Dock widget: checkpoint, image, subdomain grid, devices, Run/Cancel, feature-map explorer."""

    #: Every engine ProgressEvent, re-emitted in the GUI thread after the widget has handled it.
    progressed = Signal(object)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = None
        self.checkpoint_path: Path | None = None
        self.worker = None
        self.result = None
        self.labels_layer = None
        self._cancel: threading.Event | None = None
        self._run_kind = "main"
        self._run_region: tuple[int, int, int, int] | None = None
        self._run_output: str | None = None
        self._preselected_for = None
        self._current_image = None
        self._pending: dict[str, threading.Event | None] = {"cancel": None}
        self.destroyed.connect(functools.partial(_cancel_pending, self._pending))
        self._run_image_layer = None
        self._dirty = False
        self._restoring = True
        self._defaults = _settings.plugin_defaults()
        self._build()
        self._grid_timer = QTimer(self, singleShot=True, interval=60)
        self._grid_timer.timeout.connect(self.draw_grid)
        self._refresh_timer = QTimer(self, interval=REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_labels)
        self.viewer.camera.events.zoom.connect(self._update_index_visibility)
        layer_events = self.viewer.layers.events
        for event in (layer_events.inserted, layer_events.removed, layer_events.renamed):
            event.connect(self._on_layers_changed)
        self._on_layers_changed()
        _warm_up_layer_imports()
        self._restore_state()
        self._restoring = False

    # ----------------------------------------------------------------- UI
    def _build(self) -> None:
        layout = QVBoxLayout(self)

        model_box = QGroupBox("Checkpoint")
        model_layout = QVBoxLayout(model_box)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Bundled checkpoints; 'Open file...' loads any napari-ddunet .pt file")
        row.addWidget(self.model_combo, 1)
        self.open_button = QPushButton(OPEN_FILE)
        self.open_button.clicked.connect(self._open_file_dialog)
        row.addWidget(self.open_button)
        model_layout.addLayout(row)
        self.card = QLabel("No checkpoint loaded.")
        self.card.setTextFormat(Qt.TextFormat.RichText)
        self.card.setWordWrap(True)
        self.card.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        model_layout.addWidget(self.card)
        layout.addWidget(model_box)
        self._fill_model_combo()
        self.model_combo.activated.connect(self._on_model_chosen)

        image_box = QGroupBox("Image and grid")
        form = QFormLayout(image_box)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        form.addRow("Image layer", self.image_combo)
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("Axis of the image that holds channels (guessed; change it if wrong)")
        self.channel_combo.currentIndexChanged.connect(self._schedule_grid)
        form.addRow("Channel axis", self.channel_combo)
        size_row = QHBoxLayout()
        self.size_h = QSpinBox()
        self.size_w = QSpinBox()
        for box in (self.size_h, self.size_w):
            box.setRange(8, 1 << 16)
            box.setValue(256)
            box.setSingleStep(8)
            box.valueChanged.connect(self._schedule_grid)
            size_row.addWidget(box)
        self.size_h.setToolTip("Subdomain height in pixels (a multiple of 2**depth)")
        self.size_w.setToolTip("Subdomain width in pixels (a multiple of 2**depth)")
        form.addRow("Subdomain h x w", size_row)
        self.grid_check = QCheckBox("Show subdomain grid")
        self.grid_check.setChecked(True)
        self.grid_check.toggled.connect(self._schedule_grid)
        form.addRow(self.grid_check)
        self.grid_label = QLabel("")
        form.addRow("Grid", self.grid_label)
        layout.addWidget(image_box)

        run_box = QGroupBox("Run")
        run_form = QFormLayout(run_box)
        self.device_list = QListWidget()
        self.device_list.setMaximumHeight(80)
        for device, label in available_devices():
            item = QListWidgetItem(label)
            item.setData(Qt.ItemDataRole.UserRole, device)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if device in self._defaults.devices else Qt.CheckState.Unchecked)
            self.device_list.addItem(item)
        if not self.devices():
            self.device_list.item(0).setCheckState(Qt.CheckState.Checked)
        self.device_list.itemChanged.connect(self._save_state)
        run_form.addRow("Devices", self.device_list)
        out_row = QHBoxLayout()
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("optional .zarr (default: memory, or a temp store for big images)")
        self.output_edit.editingFinished.connect(self._save_state)
        out_row.addWidget(self.output_edit, 1)
        browse = QPushButton("...")
        browse.clicked.connect(self._choose_output)
        out_row.addWidget(browse)
        run_form.addRow("Output", out_row)
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(0, 1 << 20)
        self.budget_spin.setSingleStep(256)
        self.budget_spin.setSuffix(" MiB")
        self.budget_spin.setSpecialValueText("automatic")
        self.budget_spin.setValue(self._defaults.memory_budget_mb)
        self.budget_spin.setToolTip("Memory a run may use; the engine picks its schedule to fit (default: Preferences)")
        self.budget_spin.valueChanged.connect(self._save_state)
        run_form.addRow("Memory budget", self.budget_spin)
        self.view_check = QCheckBox("Current view only (quick preview)")
        self.view_check.setToolTip(
            "Run only the subdomains visible in the canvas; communication then sees only those subdomains"
        )
        self.view_check.toggled.connect(self._save_state)
        run_form.addRow(self.view_check)
        self.features_check = QCheckBox("Keep feature maps (bottleneck before/after communication)")
        self.features_check.setChecked(self._defaults.features)
        self.features_check.toggled.connect(self._save_state)
        run_form.addRow(self.features_check)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        run_form.addRow(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        run_form.addRow(self.progress)
        layout.addWidget(run_box)

        explore_box = QGroupBox("What communication does")
        explore = QVBoxLayout(explore_box)
        self.features_button = QPushButton("Show feature maps")
        self.features_button.setToolTip("Bottleneck maps before and after communication, aligned over the image")
        self.features_button.clicked.connect(self.show_feature_maps)
        self.features_button.setEnabled(False)
        explore.addWidget(self.features_button)
        self.compare_button = QPushButton("Compare without communication")
        self.compare_button.setToolTip("Rerun the visible region with the exchange switched off, shown side by side")
        self.compare_button.clicked.connect(self.compare_without_communication)
        self.compare_button.setEnabled(False)
        explore.addWidget(self.compare_button)
        layout.addWidget(explore_box)
        layout.addStretch(1)

    def _fill_model_combo(self) -> None:
        from napari_ddunet.core.checkpoints.bundled import bundled_models

        self.model_combo.clear()
        self.model_combo.addItem(NO_MODEL, None)
        for name, path in bundled_models().items():
            self.model_combo.addItem(name, str(path))

    # ---------------------------------------------------------- checkpoint
    def _open_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open DDU-Net checkpoint", "", "Checkpoints (*.pt);;All files (*)")
        if path:
            self.load_checkpoint(path)

    def _on_model_chosen(self, index: int) -> None:
        path = self.model_combo.itemData(index)
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str | Path, *, quiet: bool = False) -> bool:
        """Load a checkpoint and show its card; a bad file becomes a notification, never a traceback."""
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
        self.model = model
        self.checkpoint_path = Path(path)
        index = self.model_combo.findData(str(path))
        if index < 0:
            self.model_combo.addItem(self.checkpoint_path.stem, str(path))
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        info = model.info
        self.card.setText(model_card_html(info, path))
        step = info.config.downsampling
        for box in (self.size_h, self.size_w):
            box.blockSignals(True)
            box.setSingleStep(step)
            box.setMinimum(step)
            box.blockSignals(False)
        if info.subdomain_size:
            self.set_subdomain_size(info.subdomain_size)
        self._guess_channel_axis()
        self._update_buttons()
        self._schedule_grid()
        self._save_state()
        return True

    def set_subdomain_size(self, size: tuple[int, int]) -> None:
        self.size_h.setValue(int(size[0]))
        self.size_w.setValue(int(size[1]))

    def subdomain_size(self) -> tuple[int, int]:
        return self.size_h.value(), self.size_w.value()

    # --------------------------------------------------------------- image
    def _image_layers(self) -> list:
        from napari.layers import Image

        layers = self.viewer.layers
        return [layer for layer in layers if isinstance(layer, Image) and not layer.metadata.get("ddunet_derived")]

    def _on_layers_changed(self, event=None) -> None:
        """Keep the image list in step with the viewer (layers added, removed, renamed); the chosen layer
        stays chosen under a new name."""
        layers = self._image_layers()
        names = [layer.name for layer in layers]
        if names == [self.image_combo.itemText(i) for i in range(self.image_combo.count())]:
            return
        current = self._current_image
        kept = next((i for i, layer in enumerate(layers) if layer is current), None)
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if kept is not None:
            self.image_combo.setCurrentIndex(kept)
        self.image_combo.blockSignals(False)
        if kept is None:
            self._on_image_changed()
        self._update_buttons()

    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_image_changed(self, *_: Any) -> None:
        self._current_image = self.image_layer()
        self._preselect_model()
        self._guess_channel_axis()
        self._schedule_grid()
        self._update_buttons()

    def _preselect_model(self) -> None:
        """Load the bundled model a sample layer names (``layer.metadata``), on a real change of image only,
        so a model picked by hand stays while the same image stays selected."""
        from napari_ddunet.core.checkpoints.bundled import bundled_models
        from napari_ddunet.core.data.samples import recommended_model

        layer = self.image_layer()
        if layer is None or layer is self._preselected_for:
            return
        self._preselected_for = layer
        stem = recommended_model(layer.metadata)
        if stem is not None and (self.checkpoint_path is None or self.checkpoint_path.stem != stem):
            self.load_checkpoint(bundled_models()[stem], quiet=True)

    def _image_shape(self, layer) -> tuple[int, ...]:
        return tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)

    def _guess_channel_axis(self) -> None:
        layer = self.image_layer()
        self.channel_combo.blockSignals(True)
        self.channel_combo.clear()
        self.channel_combo.addItem("none", None)
        if layer is not None:
            shape = self._image_shape(layer)
            for axis, size in enumerate(shape):
                self.channel_combo.addItem(f"{axis} (size {size})", axis)
            in_channels = self.model.config.in_channels if self.model is not None else None
            guess = guess_channel_axis(shape, bool(getattr(layer, "rgb", False)), in_channels)
            self.channel_combo.setCurrentIndex(0 if guess is None else guess + 1)
        self.channel_combo.blockSignals(False)

    def channel_axis(self) -> int | None:
        return self.channel_combo.currentData()

    def _yx(self, layer) -> tuple[int, int]:
        return yx_axes(len(self._image_shape(layer)), self.channel_axis())

    # ---------------------------------------------------------------- grid
    def _schedule_grid(self, *_: Any) -> None:
        self._grid_timer.start()
        self._save_state()

    def draw_grid(self) -> None:
        """Redraw the grid over the current image (or remove it when hidden or nothing is chosen)."""
        layer = self.image_layer()
        if layer is None or not self.grid_check.isChecked():
            for name in (GRID_LAYER_NAME, GRID_LAYER_NAME + " indices"):
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            self.grid_label.setText("")
            return
        shape = self._image_shape(layer)
        if len(shape) < 2:
            return
        ya, xa = self._yx(layer)
        size = self.subdomain_size()
        update_grid_layer(self.viewer, layer, size, (ya, xa))
        rows = (shape[ya] + size[0] - 1) // size[0]
        cols = (shape[xa] + size[1] - 1) // size[1]
        self.grid_label.setText(f"{rows} x {cols} subdomains on {shape[ya]} x {shape[xa]} px")
        self._update_index_visibility()
        self.viewer.layers.selection.active = layer

    def _update_index_visibility(self, *_: Any) -> None:
        """Show the "(r, c)" texts only when a subdomain is wide enough on screen to hold one."""
        name = GRID_LAYER_NAME + " indices"
        layer = self.image_layer()
        if name not in self.viewer.layers or layer is None:
            return
        ya, xa = self._yx(layer)
        pixels = np.asarray(self.subdomain_size()) * np.abs(np.asarray(layer.scale)[[ya, xa]])
        self.viewer.layers[name].visible = bool(pixels.min() * self.viewer.camera.zoom >= MIN_INDEX_SCREEN_PX)

    # ------------------------------------------------------------- devices
    def devices(self) -> list[str]:
        chosen = []
        for i in range(self.device_list.count()):
            item = self.device_list.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                chosen.append(item.data(Qt.ItemDataRole.UserRole))
        return chosen

    def set_devices(self, devices: list[str]) -> None:
        for i in range(self.device_list.count()):
            item = self.device_list.item(i)
            on = item.data(Qt.ItemDataRole.UserRole) in devices
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def _choose_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Output store", "", "Zarr (*.zarr)")
        if path:
            self.output_edit.setText(path if path.endswith(".zarr") else path + ".zarr")
            self._save_state()

    # --------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint_path) if self.checkpoint_path else None,
            "subdomain_size": list(self.subdomain_size()),
            "devices": self.devices(),
            "output": self.output_edit.text(),
            "current_view": self.view_check.isChecked(),
            "features": self.features_check.isChecked(),
            "show_grid": self.grid_check.isChecked(),
            "memory_budget_mb": self.budget_spin.value(),
        }

    def _save_state(self, *_: Any) -> None:
        if not self._restoring:
            _settings.save_state(self._state())

    def _restore_state(self) -> None:
        state = _settings.load_state()
        checkpoint = state.get("checkpoint")
        if checkpoint and Path(checkpoint).is_file():
            self.load_checkpoint(checkpoint, quiet=True)
        size = state.get("subdomain_size")
        if isinstance(size, list) and len(size) == 2:
            self.set_subdomain_size(tuple(size))
        devices = state.get("devices")
        if isinstance(devices, list) and devices:
            self.set_devices(devices)
        self.output_edit.setText(str(state.get("output") or ""))
        self.view_check.setChecked(bool(state.get("current_view", False)))
        self.features_check.setChecked(bool(state.get("features", self._defaults.features)))
        self.grid_check.setChecked(bool(state.get("show_grid", True)))
        budget = state.get("memory_budget_mb")
        if isinstance(budget, int) and budget >= 0:
            self.budget_spin.setValue(budget)

    # ----------------------------------------------------------------- run
    def _update_buttons(self) -> None:
        running = self.worker is not None
        ready = self.model is not None and self.image_layer() is not None
        self.run_button.setEnabled(ready and not running)
        self.cancel_button.setEnabled(running)
        has_features = self.result is not None and getattr(self.result, "bottleneck", None) is not None
        self.features_button.setEnabled(has_features and not running)
        self.compare_button.setEnabled(ready and not running and bool(self.model.config.comm_features))

    def _image_data(self, layer):
        return layer.data[0] if layer.multiscale else layer.data

    def current_view_region(self) -> tuple[int, int, int, int] | None:
        layer = self.image_layer()
        return None if layer is None else visible_region(self.viewer, layer, self._yx(layer))

    def run(self, *_: Any, region: tuple[int, int, int, int] | None = None, communicate: bool | None = None) -> None:
        """Start a run on the chosen image (the visible region when 'current view only' is ticked)."""
        layer = self.image_layer()
        if self.model is None or layer is None:
            show_info("Choose a checkpoint and an image layer first.")
            return
        if self.worker is not None:
            return
        kind = "compare" if communicate is False else "main"
        if kind == "main" and region is None and self.view_check.isChecked():
            region = self.current_view_region()
        devices = self.devices()
        if not devices:
            show_error("Tick at least one device.")
            return
        shape = self._image_shape(layer)
        ya, xa = self._yx(layer)
        output = self.output_edit.text().strip() or None
        if kind == "compare":
            output = None
        elif output is None and shape[ya] * shape[xa] > IN_MEMORY_PIXELS:
            output = temporary_store()
        kwargs: dict[str, Any] = {
            "subdomain_size": self.subdomain_size(),
            "devices": tuple(devices),
            "output": output,
            "features": kind == "main" and self.features_check.isChecked(),
            "channel_axis": self.channel_axis(),
            "region": region,
            "cancel": threading.Event(),
        }
        if communicate is not None:
            kwargs["communicate"] = communicate
        if self.budget_spin.value() > 0:
            kwargs["memory_budget"] = self.budget_spin.value() * 2**20
        self._start_worker(layer, kind, region, kwargs)

    def _start_worker(self, layer, kind: str, region, kwargs: dict[str, Any]) -> None:
        from napari.qt.threading import create_worker

        self._cancel = self._pending["cancel"] = kwargs["cancel"]
        self._run_output = kwargs["output"]
        self._run_kind = kind
        self._run_region = region
        self._run_image_layer = layer
        self.result = None if kind == "main" else self.result
        self._labels_target = None
        if kind == "main":
            shape = self._image_shape(layer)
            ya, xa = self._yx(layer)
            image_yx = (shape[ya], shape[xa])
            self._prepare_labels_layer(
                expects_multiscale(image_yx, self.subdomain_size(), self.model.config.downsampling, kwargs["output"])
            )
        worker = create_worker(
            _run_engine, self._image_data(layer), self.model, _start_thread=False, _ignore_errors=True, **kwargs
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting...")
        self._update_buttons()
        self._save_state()
        self._refresh_timer.start()
        worker.start()

    def cancel(self) -> None:
        """Ask the engine to stop at its next batch; it returns a result marked cancelled."""
        if self._cancel is not None:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.progress.setFormat("cancelling...")

    def _on_progress(self, event) -> None:
        if event.outputs and self._labels_target is None and "labels" in event.outputs:
            self._labels_target = event.outputs["labels"]
            if self._run_kind == "main":
                self._attach_labels(self._labels_target)
        total = max(int(event.total), 1)
        self.progress.setRange(0, total)
        self.progress.setValue(min(int(event.done), total))
        stopping = "cancelling... " if self._cancel is not None and self._cancel.is_set() else ""
        self.progress.setFormat(f"{stopping}{event.phase}: {event.done}/{event.total}")
        if event.region is not None:
            self._dirty = True
        self.progressed.emit(event)

    def _labels_name(self, layer) -> str:
        return f"{layer.name} DDU-Net labels"

    def _prepare_labels_layer(self, multiscale: bool) -> None:
        """Create (or reuse) the result layer at the click, before the engine starts.

        napari needs about a second to build a new Labels layer's visuals; doing it here keeps that
        pause out of the run. The layer holds an empty placeholder until the engine's output exists.
        """
        layer = self._run_image_layer
        name = self._labels_name(layer)
        info = self.model.info
        ya, xa = self._yx(layer)
        empty = np.zeros((1, 1), np.uint8)
        placeholder = [np.zeros((2, 2), np.uint8), empty] if multiscale else empty
        existing = next((candidate for candidate in self.viewer.layers if candidate.name == name), None)
        if existing is not None and existing.multiscale == multiscale:
            existing.data = placeholder
            self.labels_layer = existing
        else:
            if existing is not None:
                self.viewer.layers.remove(existing)
            self.labels_layer = self.viewer.add_labels(
                placeholder,
                name=name,
                multiscale=multiscale,
                opacity=0.6,
                metadata={"ddunet_derived": True},
            )
        self.labels_layer.colormap = label_colormap(info.class_colors)
        self.labels_layer.features = {"index": list(range(len(info.class_names))), "class": list(info.class_names)}
        self.labels_layer.scale = np.asarray(layer.scale)[[ya, xa]]
        self.labels_layer.translate = np.asarray(layer.translate)[[ya, xa]]
        self._raise_grid()

    def _attach_labels(self, labels: Any) -> None:
        """Point the result layer at the engine's labels array; it fills in as the engine writes."""
        data, multiscale = labels_layer_data(labels, output=self._run_output)
        if self.labels_layer is None or self.labels_layer not in self.viewer.layers:
            return
        if self.labels_layer.multiscale != multiscale:
            self._prepare_labels_layer(multiscale)
        self.labels_layer.data = data

    def _raise_grid(self) -> None:
        """Keep the grid lines and indices above result layers."""
        for grid_name in (GRID_LAYER_NAME, GRID_LAYER_NAME + " indices"):
            if grid_name in self.viewer.layers:
                self.viewer.layers.move(self.viewer.layers.index(grid_name), len(self.viewer.layers))

    def _refresh_labels(self) -> None:
        if self._dirty and self.labels_layer is not None and self._run_kind == "main":
            self._dirty = False
            self.labels_layer.refresh()

    def _on_returned(self, result) -> None:
        if self._run_kind == "main":
            self.result = result
            self._dirty = True  # the final refresh happens once, in _on_finished
        else:
            self._show_comparison(result)
        state = "cancelled" if result.cancelled else "done"
        self.progress.setFormat(f"{state} ({result.schedule}, {result.grid[0]}x{result.grid[1]} grid)")
        if not result.cancelled:
            self.progress.setValue(self.progress.maximum())

    def _on_error(self, error: BaseException) -> None:
        if isinstance(error, DDUNetError):
            show_error(str(error))
        else:
            logger.error("DDU-Net run failed", exc_info=error)
            show_error(f"DDU-Net run failed: {type(error).__name__}: {error}")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("failed")

    def _on_finished(self) -> None:
        self._refresh_timer.stop()
        self._dirty = True
        self._refresh_labels()
        self.worker = None
        self._cancel = None
        self._run_kind = "main"
        self._update_buttons()

    # --------------------------------------------------- feature explorer
    def show_feature_maps(self) -> list:
        """Add the bottleneck maps before and after communication as (F, h, w) image layers over the image."""
        result, layer = self.result, self._run_image_layer
        if result is None or result.bottleneck is None or layer is None:
            show_info("Run with 'Keep feature maps' ticked first.")
            return []
        ya, xa = self._yx(layer)
        added = []
        for key, title in (("bottleneck", "before communication"), ("communicated", "after communication")):
            maps = getattr(result, key)
            if maps is None:
                continue
            name = f"{layer.name} bottleneck {title}"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            kwargs = feature_layer_kwargs(
                maps,
                downsampling=self.model.config.downsampling,
                image_scale=np.asarray(layer.scale)[[ya, xa]],
                image_translate=np.asarray(layer.translate)[[ya, xa]],
            )
            visible = key == "communicated"  # toggle the eye to compare with the maps before communication
            added.append(
                self.viewer.add_image(maps, name=name, visible=visible, metadata={"ddunet_derived": True}, **kwargs)
            )
        self._raise_grid()
        self.viewer.layers.selection.active = added[-1] if added else layer
        return added

    def compare_without_communication(self) -> None:
        """Rerun the visible region with the exchange off; show it to the right of the image."""
        layer = self.image_layer()
        if layer is None or self.model is None:
            return
        self.run(region=self.current_view_region(), communicate=False)

    def _show_comparison(self, result) -> None:
        layer = self._run_image_layer
        ya, xa = self._yx(layer)
        shape = self._image_shape(layer)
        scale = np.asarray(layer.scale)[[ya, xa]]
        translate = np.asarray(layer.translate)[[ya, xa]]
        shift = translate + np.array([0.0, (shape[xa] + max(16, shape[xa] // 50)) * scale[1]])
        image_name = f"{layer.name} (no communication view)"
        labels_name = f"{layer.name} labels without communication"
        for name in (image_name, labels_name):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        full_translate = np.asarray(layer.translate, dtype=float).copy()
        full_translate[[ya, xa]] = shift
        self.viewer.add_image(
            layer.data,
            name=image_name,
            multiscale=layer.multiscale,
            rgb=layer.rgb,
            colormap=layer.colormap,
            contrast_limits=layer.contrast_limits,
            scale=layer.scale,
            translate=full_translate,
            metadata={"ddunet_derived": True},
        )
        data, multiscale = labels_layer_data(result.labels)
        self.viewer.add_labels(
            data,
            name=labels_name,
            multiscale=multiscale,
            colormap=label_colormap(self.model.info.class_colors),
            scale=scale,
            translate=shift,
            opacity=0.6,
            metadata={"ddunet_derived": True},
        )
        self.viewer.reset_view()
        self.viewer.layers.selection.active = layer

    # ------------------------------------------------------------ cleanup
    def wait(self, timeout_ms: int = 60_000) -> None:
        """Block (processing events) until the current run ends; for scripts and tests."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        clock = QElapsedTimer()
        clock.start()
        while self.worker is not None and clock.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            threading.Event().wait(0.005)

    def closeEvent(self, event) -> None:
        self.cancel()
        super().closeEvent(event)
