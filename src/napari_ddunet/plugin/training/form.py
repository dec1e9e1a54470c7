"""The training panel's form (magicgui), and how its layers pair and name their classes.

No ``from __future__ import annotations``: magicgui resolves the field types at run time.

Fields only: the panel (dock.py) reads them into a ``training.session.TrainingRequest``. The paper's
defaults (training/train.py: 40 epochs, Adam at 0.008) are the form's defaults.
"""


from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import FunctionGui

from napari_ddunet.core.inference.devices import available_devices
from napari_ddunet.core.io.layout import infer_channel_axis, yx_axes

#: The "Network" choice that builds a new DDU-Net from the fields below it (others fine-tune a checkpoint).
NEW_NETWORK = "(new network)"
#: Feature-table columns that name a Labels layer's classes, in the order they are looked for.
NAME_COLUMNS = ("name", "class", "class_name", "label")


def _training_form(
    images: list[Any] = [],  # noqa: B006 (a default for the form, never mutated)
    label_layers: list[Any] = [],  # noqa: B006 (FunctionGui.labels is taken)
    pairs: str = "",
    ignore_value: int = 0,
    class_names: str = "",
    network: str = NEW_NETWORK,
    fine_tune: Path = Path(),
    depth: int = 3,
    base_channels: int = 16,
    comm_features: int = 32,
    communication: bool = True,
    grid: tuple[int, int] = (2, 2),
    subdomain_size: tuple[int, int] = (64, 64),
    epochs: int = 40,
    learning_rate: float = 0.008,
    batch_size: int = 8,
    samples_per_epoch: int = 0,
    devices: list[str] = ["cpu"],  # noqa: B006
    output: Path = Path(),
    overwrite: bool = False,
) -> None:
    """The form's fields; the panel reads them, nothing is called."""


def build_form(image_choices, labels_choices, bundled_names: Sequence[str]) -> FunctionGui:
    """The form; ``image_choices(widget)`` / ``labels_choices(widget)`` list the candidate layers."""
    options = dict(
        images={"widget_type": "Select", "choices": image_choices, "label": "Images",
                "tooltip": "One or more image layers to train on"},
        label_layers={"widget_type": "Select", "choices": labels_choices, "label": "Labels",
                "tooltip": "The Labels layers painted over the images, one per image, in the same order"},
        pairs={"widget_type": "Label", "label": "Pairs"},
        ignore_value={"label": "Unlabelled value", "min": -1, "max": 1 << 16,
                      "tooltip": "Pixels with this label count in no loss or metric (0: napari's unpainted; "
                                 "-1: none, every value is a class)"},
        class_names={"label": "Class names",
                     "tooltip": "Comma separated, one per label value 0, 1, ...; empty: the Labels layer's "
                                "features table (a name column), else 'class N'"},
        network={"widget_type": "ComboBox", "choices": [NEW_NETWORK, *bundled_names], "label": "Network",
                 "tooltip": "A new DDU-Net(D, F, C) from the fields below, or a bundled checkpoint to fine-tune"},
        fine_tune={"mode": "r", "filter": "*.pt", "label": "Fine-tune file",
                   "tooltip": "Or any napari-ddunet checkpoint to start from (its classes and bands must match)"},
        depth={"label": "Depth D", "min": 1, "max": 6},
        base_channels={"label": "Base channels", "min": 1, "max": 256},
        comm_features={"label": "F (communicated)", "min": 0, "max": 512,
                       "tooltip": "Bottleneck channels exchanged between subdomains (0: no communication net)"},
        communication={"label": "Communication C", "tooltip": "Off: the C=N network, subdomains alone"},
        grid={"label": "Grid (rows x cols)", "options": {"min": 1, "max": 16}},
        subdomain_size={"label": "Subdomain h x w", "options": {"min": 8, "max": 4096, "step": 8}},
        epochs={"label": "Epochs", "min": 1, "max": 10_000},
        learning_rate={"label": "Learning rate", "min": 1e-6, "max": 1.0, "step": 1e-4},
        batch_size={"label": "Batch size", "min": 1, "max": 1024},
        samples_per_epoch={"label": "Crops per epoch", "min": 0, "max": 1 << 20,
                           "tooltip": "Random crops around the painted pixels per epoch (0: the trainer's default)"},
        devices={"widget_type": "Select", "choices": available_devices(), "value": ["cpu"], "label": "Devices"},
        output={"mode": "d", "label": "Output folder",
                "tooltip": "best.pt, last.pt, metrics.csv, curves.png and summary.json go here"},
        overwrite={"label": "Overwrite output",
                   "tooltip": "Replace an earlier run's results in the output folder (Resume continues it)"},
    )
    return FunctionGui(_training_form, call_button=False, param_options=options)


def image_yx(layer) -> tuple[int, int]:
    """The (Y, X) size of an image layer, its channel axis told by the package's one layout rule."""
    shape = tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)
    y, x = yx_axes(len(shape), infer_channel_axis(shape, rgb=bool(getattr(layer, "rgb", False))))
    return shape[y], shape[x]


def matching_labels(image, candidates: Sequence[Any]) -> Any | None:
    """The Labels layer painted over ``image``: the same Y, X size, one named after the image first, the
    newest first (the strokes just painted, not a sample's ground truth added with the image)."""
    same = [layer for layer in reversed(candidates) if tuple(layer.data.shape) == tuple(image_yx(image))]
    named = [layer for layer in same if layer.name.startswith(image.name)]
    return (named or same or [None])[0]


def class_names_and_colors(layer, count: int) -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]:
    """``count`` class names and RGBA colours from a Labels layer: its features table's name column (rows
    by its ``index`` column, else row i = label i) and its colormap."""
    names = [f"class {value}" for value in range(count)]
    features = getattr(layer, "features", None)
    column = next((c for c in NAME_COLUMNS if features is not None and c in features.columns), None)
    if column is not None:
        index = features["index"] if "index" in features.columns else range(len(features))
        for value, name in zip(index, features[column], strict=True):
            if 0 <= int(value) < count and str(name):
                names[int(value)] = str(name)
    colors = np.asarray(layer.colormap.map(np.arange(count)), dtype=float)
    return tuple(names), tuple(tuple(float(c) for c in row) for row in colors)


def typed_class_names(text: str) -> tuple[str, ...]:
    """The comma-separated names typed in the form ("" for none)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
