"""The dock widget's form, built with magicgui and remembered the magicgui way (``persist=True``).

The values that belong to the user (checkpoint, subdomain size, grid, devices, budget, features,
current view) are stored by magicgui in its cache folder and restored in the next session. The image,
its channel axis, its bands and the output store belong to one image, so they are never stored: a new
session or another image starts without an output path.

The band picker ("Bands") lists the bands of the channel axis that feed the model, in order
(2, 1, 0 feeds R, G, B of a B, G, R, NIR image); it shows only when the image has a channel axis.
"""


from collections.abc import Sequence
from pathlib import Path
from typing import Any

from magicgui.widgets import FunctionGui
from napari.layers import Image

from napari_ddunet.core.inference.devices import available_devices
from napari_ddunet.core.io.layout import trained_bands
from napari_ddunet.core.io.normalization import CHOICES
from napari_ddunet.plugin.settings import PluginDefaults

NO_MODEL = "(choose a checkpoint)"
#: The "Planes" choices of a stack (an image with t/z axes): every plane, or the one the viewer shows.
WHOLE_STACK, CURRENT_PLANE = "whole stack", "current plane"
#: Form fields that describe one image, not the user's preferences: never persisted.
PER_IMAGE_FIELDS = frozenset({"image", "channel_axis", "bands", "output", "model", "grid", "normalization"})
#: The largest band index a picker entry takes (the engine names a band the image lacks).
MAX_BAND = 1 << 16


class RunForm(FunctionGui):
    """A FunctionGui that persists only the user's preferences (see :data:`PER_IMAGE_FIELDS`)."""

    def _dump(self, path: str | Path | None = None) -> None:
        import pickle

        path = Path(path or self._dump_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        values = {}
        for widget in self._list:
            if widget.name in PER_IMAGE_FIELDS or not hasattr(widget, "value"):
                continue
            values[widget.name] = pickle.dumps(widget.value)
        path.write_bytes(pickle.dumps(values))


def _ddunet_form(
    image: Image,
    model: str = NO_MODEL,
    checkpoint: Path = Path(),
    channel_axis: Any = None,
    bands: list[int] = [0],  # noqa: B006 (a default for the form, never mutated)
    subdomain_size: tuple[int, int] = (256, 256),
    show_grid: bool = True,
    grid: str = "",
    devices: list[str] = ["cpu"],  # noqa: B006 (a default for the form, never mutated)
    output: str = "",
    memory_budget_mb: int = 0,
    features: bool = True,
    current_view_only: bool = False,
    planes: str = WHOLE_STACK,
    normalization: str = "checkpoint",
) -> None:
    """The form's fields; the dock widget reads them, nothing is called."""


def build_form(image_choices, bundled_names: list[str], defaults: PluginDefaults) -> RunForm:
    """The form, its persisted values restored; ``image_choices(widget)`` lists the candidate image layers."""
    device_choices = available_devices()
    known = {device for _, device in device_choices}
    ticked = [device for device in defaults.devices if device in known] or ["cpu"]
    options = dict(
        model={"widget_type": "ComboBox", "choices": [NO_MODEL, *bundled_names], "label": "Checkpoint",
               "tooltip": "Bundled checkpoints; or open any napari-ddunet .pt file below"},
        checkpoint={"mode": "r", "filter": "*.pt", "label": "File"},
        image={"label": "Image layer"},
        channel_axis={"widget_type": "ComboBox", "choices": [("none", None)], "label": "Channel axis",
                      "tooltip": "Axis of the image that holds channels (guessed; change it if wrong)"},
        # one band per row: a row of 13 (Sentinel-2) would widen the dock past most screens
        bands={"label": "Bands", "options": {"min": 0, "max": MAX_BAND}, "layout": "vertical",
               "tooltip": "Bands of the channel axis that feed the model, in this order (+ adds one)"},
        subdomain_size={"label": "Subdomain h x w", "options": {"min": 8, "max": 1 << 16, "step": 8},
                        "tooltip": "Subdomain height and width in pixels (multiples of 2**depth)"},
        show_grid={"label": "Show subdomain grid"},
        grid={"widget_type": "Label", "label": "Grid"},
        devices={"widget_type": "Select", "choices": device_choices, "value": ticked, "label": "Devices"},
        output={"label": "Output", "tooltip": "optional .zarr (default: memory, or a temp store for big images)"},
        memory_budget_mb={"label": "Memory budget (MiB, 0 = auto)", "min": 0, "max": 1 << 20, "step": 256,
                          "tooltip": "Memory a run may use; 0: the engine decides (default: Preferences)"},
        features={"label": "Keep feature maps", "value": defaults.features},
        current_view_only={"label": "Current view only (quick preview)"},
        planes={"widget_type": "ComboBox", "choices": [WHOLE_STACK, CURRENT_PLANE], "label": "Planes",
                "tooltip": "A stack (t/z sliders): segment every plane, or only the one the viewer shows",
                "visible": False},
        normalization={"widget_type": "ComboBox", "choices": list(CHOICES), "label": "Normalisation",
                       "tooltip": "checkpoint: as the model was trained; percentile: this image's p1..p99 onto the "
                                  "training data's (16-bit data into an 8-bit model); dtype: the dtype's range"},
    )
    options["memory_budget_mb"]["value"] = defaults.memory_budget_mb
    form = RunForm(_ddunet_form, call_button=False, persist=True, param_options=options)
    # napari's type registration for Image lists every image layer; ours leaves out derived ones.
    form.image.choices = image_choices
    return form


def default_bands(have: int, in_channels: int | None, trained: Sequence[int] | None = None) -> list[int]:
    """The bands the model was trained on where the image has them, else the first bands, as many as
    the model takes (all of them without a model): RGB of an RGBA layer."""
    chosen = trained_bands(trained, have, in_channels)
    return chosen or list(range(have if in_channels is None else min(have, in_channels)))


def show_bands(form: RunForm, have: int | None, in_channels: int | None,
               trained: Sequence[int] | None = None) -> None:
    """Show the band picker for an image with ``have`` bands on its channel axis (hide it without one),
    its entries reset to :func:`default_bands`."""
    field = form.bands
    field.visible = have is not None
    if have is None:
        return
    field.label = f"Bands (0..{have - 1})"
    field.value = default_bands(have, in_channels, trained)
