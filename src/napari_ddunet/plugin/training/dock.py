"""The DDU-Net training dock widget: the form, the controller, the curves, progress and the buttons.

No training happens here: the trainer runs in the controller's worker. This module turns the form
into a ``training.session.TrainingRequest`` (checked, one notification on bad input, before any
work), the trainer's events into a progress bar and curves, and a run's best.pt into an entry of
:data:`napari_ddunet.plugin.trained_models.trained_models`, which the segmentation widget lists.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import Label, ProgressBar, PushButton
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_ddunet.core.checkpoints.bundled import bundled_models
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.plugin.trained_models import trained_models
from napari_ddunet.plugin.training.controller import TrainingController
from napari_ddunet.plugin.training.curves import CurvesView
from napari_ddunet.plugin.training.form import (
    NEW_NETWORK,
    build_form,
    class_names_and_colors,
    image_yx,
    matching_labels,
    typed_class_names,
)

logger = logging.getLogger(__name__)


def _cancel_pending(controller: TrainingController, *_: Any) -> None:
    """Stop a training whose panel is gone (the dock was closed or the viewer quit)."""
    controller.cancel()


def _layer_data(layer) -> Any:
    return layer.data[0] if layer.multiscale else layer.data


class TrainingWidget(QWidget):
    """Dock widget: ``form`` (magicgui), ``controller`` (runs), ``curves``, progress and Run/Cancel/Resume."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.form = build_form(self._image_choices, self._labels_choices, list(bundled_models()))
        self.curves = CurvesView()
        self.curves.setMinimumHeight(180)
        self.run_button = PushButton(text="Train")
        self.resume_button = PushButton(text="Resume")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.status = Label(value="idle")
        self.status.native.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        for widget in (self.run_button, self.resume_button, self.cancel_button, self.progress, self.status):
            layout.addWidget(widget.native)
        layout.addWidget(self.curves)
        layout.addStretch(1)

        self.controller = TrainingController()  # not a Qt child: it outlives a closed dock until its run ends
        self.controller.started.connect(self._on_started)
        self.controller.progressed.connect(self._on_progress)
        self.controller.returned.connect(self._on_returned)
        self.controller.failed.connect(self._on_error)
        self.controller.finished.connect(self._on_finished)
        self.destroyed.connect(functools.partial(_cancel_pending, self.controller))
        self.run_button.changed.connect(lambda: self.run())
        self.resume_button.changed.connect(lambda: self.run(resume=True))
        self.cancel_button.changed.connect(self.cancel)
        self.form.images.changed.connect(self._pair_labels)
        self.form.label_layers.changed.connect(self._show_pairs)
        layer_events = self.viewer.layers.events
        for event in (layer_events.inserted, layer_events.removed, layer_events.renamed):
            event.connect(self.reset_choices)
        self.reset_choices()

    # ------------------------------------------------------------ layers
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.metadata.get("ddunet_derived")]

    def _labels_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and not layer.metadata.get("ddunet_derived")]

    def reset_choices(self, *_: Any) -> None:
        """Follow the viewer's layers; a lone image is chosen, with the Labels layer painted over it."""
        self.form.images.reset_choices()
        self.form.label_layers.reset_choices()
        images = [layer for _, layer in self._image_choices()]
        if not self.form.images.value and len(images) == 1:
            self.form.images.value = images
        self._pair_labels()

    def _pair_labels(self, *_: Any) -> None:
        """Choose, for each chosen image, the Labels layer of its size (one named after it first)."""
        candidates = [layer for _, layer in self._labels_choices()]
        chosen = [matching_labels(image, candidates) for image in self.form.images.value if image is not None]
        if all(layer is not None for layer in chosen) and len({id(layer) for layer in chosen}) == len(chosen):
            with self.form.label_layers.changed.blocked():
                self.form.label_layers.value = chosen
        self._show_pairs()

    def pairs(self) -> list[tuple[Any, Any]]:
        """(image layer, Labels layer) pairs in the viewer's order; raises DDUNetError when they do not pair."""
        # magicgui's Select lists a "-----" entry (None) before the layers
        images = [layer for layer in self.form.images.value if layer is not None]
        labels = [layer for layer in self.form.label_layers.value if layer is not None]
        if not images:
            raise DDUNetError("Choose at least one image layer to train on.")
        if len(labels) != len(images):
            raise DDUNetError(f"Choose one Labels layer per image: {len(images)} image(s), {len(labels)} Labels.")
        return list(zip(images, labels, strict=True))

    def _show_pairs(self, *_: Any) -> None:
        try:
            self.form.pairs.value = "; ".join(f"{i.name} <- {m.name}" for i, m in self.pairs())
        except DDUNetError as error:
            self.form.pairs.value = str(error)
        self._update_buttons()

    # ----------------------------------------------------------- request
    def classes(self, labels_layer, count: int):
        """Class names (typed in, else the Labels layer's features, else "class N") and the layer's colours."""
        names, colors = class_names_and_colors(labels_layer, count)
        typed = typed_class_names(self.form.class_names.value)
        if typed and len(typed) != count:
            raise DDUNetError(f"Type {count} class names (label values 0..{count - 1}), not {len(typed)}.")
        return (typed or names), colors

    def output_folder(self) -> Path:
        output = Path(self.form.output.value)
        if str(self.form.output.value) in ("", "."):
            raise DDUNetError("Choose an output folder for the checkpoints and curves.")
        return output

    def fine_tune_checkpoint(self) -> Path | None:
        network = self.form.network.value
        if network != NEW_NETWORK:
            return bundled_models()[network]
        path = self.form.fine_tune.value
        return Path(path) if str(path) not in ("", ".") else None

    def request(self, *, resume: bool = False):
        """The TrainingRequest the form describes, checked by the trainer; DDUNetError on bad input."""
        from training.session import TrainingRequest, check_request

        pairs = self.pairs()
        ignore = int(self.form.ignore_value.value)
        label_arrays = tuple(np.asarray(labels.data) for _, labels in pairs)
        for (image, labels), array in zip(pairs, label_arrays, strict=True):
            if tuple(array.shape) != tuple(image_yx(image)):
                raise DDUNetError(f"Labels layer '{labels.name}' is {array.shape[0]} x {array.shape[1]} px, "
                                  f"image '{image.name}' {image_yx(image)[0]} x {image_yx(image)[1]}.")
        count = max(int(array.max()) for array in label_arrays) + 1
        names, colors = self.classes(pairs[0][1], count)
        request = TrainingRequest(
            images=tuple(_layer_data(image) for image, _ in pairs),
            labels=label_arrays,
            output=self.output_folder(),
            ignore_index=None if ignore < 0 else ignore,
            class_names=tuple(names),
            class_colors=tuple(colors),
            num_classes=count,
            grid=tuple(int(v) for v in self.form.grid.value),
            subdomain_size=tuple(int(v) for v in self.form.subdomain_size.value),
            depth=int(self.form.depth.value),
            base_channels=int(self.form.base_channels.value),
            comm_features=int(self.form.comm_features.value),
            communication=bool(self.form.communication.value),
            fine_tune=self.fine_tune_checkpoint(),
            epochs=int(self.form.epochs.value),
            learning_rate=float(self.form.learning_rate.value),
            batch_size=int(self.form.batch_size.value),
            samples_per_epoch=int(self.form.samples_per_epoch.value) or None,
            devices=",".join(self.form.devices.value) or "cpu",
            resume=resume,
            overwrite=bool(self.form.overwrite.value) and not resume,
        )
        check_request(request)
        return request

    # --------------------------------------------------------------- run
    def _update_buttons(self) -> None:
        running = self.controller.running
        self.run_button.enabled = self.resume_button.enabled = not running and bool(self.form.images.value)
        self.cancel_button.enabled = running and not self.controller.cancelling

    def _checked_request(self, resume: bool):
        """The request, or None after one error notification (nothing started, no file written)."""
        if not self.form.devices.value:
            show_error("Tick at least one device.")
            return None
        try:
            return self.request(resume=resume)
        except DDUNetError as error:
            show_error(str(error))
            return None

    def run(self, *, resume: bool = False):
        """Start the training the form describes; its request, or None when it could not start."""
        if self.controller.running:
            return None
        request = self._checked_request(resume)
        if request is None or not self.controller.run(request):
            return None
        return request

    def run_blocking(self, *, resume: bool = False, timeout_s: float = 3600.0):
        """:meth:`run` and wait; the trainer's result (None when cancelled or when it could not start)."""
        request = self._checked_request(resume)
        if request is None:
            return None
        return self.controller.run_blocking(request, timeout_s=timeout_s)

    def cancel(self, *_: Any) -> None:
        """Stop at the trainer's next event; best.pt so far is kept and listed as a model."""
        if self.controller.running:
            self.controller.cancel()
            self.cancel_button.enabled = False
            self.status.value = "cancelling..."

    def wait(self, timeout_s: float = 60.0) -> None:
        self.controller.wait(timeout_s)

    def _on_started(self, request) -> None:
        self.progress.max = 0  # busy until the first event says how many batches an epoch has
        self.status.value = "preparing..."
        self.curves.show_history(())
        self._update_buttons()

    def _on_progress(self, request, event) -> None:
        from training.session import TrainingPhase

        self.progress.max = max(int(event.batches), 1)
        self.progress.value = min(int(event.batch), self.progress.max)
        stopping = "cancelling... " if self.controller.cancelling else ""
        if event.phase is TrainingPhase.BATCH:
            where = f"epoch {min(event.epoch + 1, event.epochs)}/{event.epochs}, batch {event.batch}/{event.batches}"
        else:
            where = f"{event.phase.value}: {event.epoch}/{event.epochs} epochs done"
        loss = "" if event.train_loss is None else f", train loss {event.train_loss:.4f}"
        miou = "" if event.val_miou is None else f", val mIoU {event.val_miou:.3f}"
        self.status.value = f"{stopping}{where}{loss}{miou}"
        if event.phase in (TrainingPhase.EPOCH, TrainingPhase.FINISHED):
            self.curves.show_history(event.history)

    def _on_returned(self, request, result) -> None:
        best = self.controller.best_checkpoint()
        state = "cancelled" if result is None else f"done ({result.epochs_run} epochs)"
        if best is not None and Path(best).is_file():
            name = trained_models.add(best)
            self.status.value = f"{state}: {best} is '{name}' in the segmentation widget"
        else:
            self.status.value = f"{state}: no checkpoint yet"
        if result is not None:
            self.progress.value = self.progress.max

    def _on_error(self, request, error: BaseException) -> None:
        if isinstance(error, DDUNetError):
            show_error(str(error))
        else:
            logger.error("DDU-Net training failed", exc_info=error)
            show_error(f"DDU-Net training failed: {type(error).__name__}: {error}")
        self.status.value = "failed"

    def _on_finished(self, request) -> None:
        self._update_buttons()

    def closeEvent(self, event) -> None:
        self.cancel()
        super().closeEvent(event)
