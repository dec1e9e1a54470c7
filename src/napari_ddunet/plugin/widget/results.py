"""Result layers: the labels of a run, the bottleneck feature maps, and the no-communication comparison.

Each function takes the viewer and the image layer the run was for and returns the layers it made;
none of them keeps state, so the dock widget decides when to call them. Every result layer takes the
image layer's y/x scale, translate and units, and :func:`layer_calibration` hands the same to the
engine, so the store's OME-Zarr metadata places the labels where napari shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_ddunet.core.io.ome import Calibration
from napari_ddunet.plugin.grid_layer import GRID_LAYER_NAME
from napari_ddunet.plugin.live import feature_layer_kwargs, label_colormap, labels_layer_data


def labels_name(image_layer) -> str:
    return f"{image_layer.name} DDU-Net labels"


def layer_calibration(image_layer, yx: tuple[int, ...], names: Sequence[str] = ("y", "x")) -> Calibration:
    """The image layer's y/x pixel size, origin and units (a stack's t/z first: ``yx`` the layer axes
    named ``names``), for the engine's output metadata."""
    axes = list(yx)
    units = [str(unit) for unit in np.asarray(image_layer.units, dtype=object)[axes]]
    return Calibration.of_axes(tuple(names), np.asarray(image_layer.scale, dtype=float)[axes],
                               np.asarray(image_layer.translate, dtype=float)[axes], units)


def _place(layer, image_layer, yx: tuple[int, int]) -> None:
    """Put a 2D result layer where the image layer's y/x axes are, in the same units."""
    axes = list(yx)
    layer.scale = np.asarray(image_layer.scale)[axes]
    layer.translate = np.asarray(image_layer.translate)[axes]
    layer.units = tuple(np.asarray(image_layer.units, dtype=object)[axes])


def raise_grid(viewer) -> None:
    """Keep the grid lines and indices above result layers."""
    for name in (GRID_LAYER_NAME, GRID_LAYER_NAME + " indices"):
        if name in viewer.layers:
            viewer.layers.move(viewer.layers.index(name), len(viewer.layers))


def prepare_labels_layer(viewer, image_layer, yx: tuple[int, int], info: Any, multiscale: bool,
                         visible: bool = True):
    """Create (or reuse) the result layer, holding an empty placeholder until a run points it at its labels.

    napari needs about half a second to build a new Labels layer's visuals, so the dock builds it hidden
    as soon as an image and a model are chosen (``visible=False``), and the Run click only reuses it.
    """
    name = labels_name(image_layer)
    lead = (1,) * (len(yx) - 2)   # a stack's labels have its leading axes, so they scroll with the image
    empty = np.zeros((*lead, 1, 1), np.uint8)
    placeholder = [np.zeros((*lead, 2, 2), np.uint8), empty] if multiscale else empty
    existing = next((layer for layer in viewer.layers if layer.name == name), None)
    if existing is not None and existing.multiscale == multiscale and existing.ndim == len(yx):
        existing.data = placeholder
        layer = existing
    else:
        if existing is not None:
            viewer.layers.remove(existing)
        layer = viewer.add_labels(
            placeholder, name=name, multiscale=multiscale, opacity=0.6, visible=visible,
            metadata={"ddunet_derived": True},
        )
    layer.colormap = label_colormap(info.class_colors)
    layer.features = {"index": list(range(len(info.class_names))), "class": list(info.class_names)}
    _place(layer, image_layer, yx)
    layer.visible = visible
    raise_grid(viewer)
    return layer


def attach_labels(viewer, labels_layer, image_layer, yx, info, labels: Any, output: str | None):
    """Point the result layer at the engine's labels array; it fills in as the engine writes."""
    data, multiscale = labels_layer_data(labels, output=output)
    if labels_layer is None or labels_layer not in viewer.layers:
        return labels_layer
    if labels_layer.multiscale != multiscale:
        labels_layer = prepare_labels_layer(viewer, image_layer, yx, info, multiscale)
    labels_layer.data = data
    return labels_layer


def add_feature_maps(viewer, image_layer, yx: tuple[int, int], result: Any, downsampling: int) -> list:
    """The bottleneck maps before and after communication as (F, h, w) image layers over the image."""
    added = []
    for key, title in (("bottleneck", "before communication"), ("communicated", "after communication")):
        maps = getattr(result, key)
        if maps is None:
            continue
        name = f"{image_layer.name} bottleneck {title}"
        if name in viewer.layers:
            viewer.layers.remove(name)
        kwargs = feature_layer_kwargs(
            maps,
            downsampling=downsampling,
            image_scale=np.asarray(image_layer.scale)[list(yx)],
            image_translate=np.asarray(image_layer.translate)[list(yx)],
        )
        visible = key == "communicated"  # toggle the eye to compare with the maps before communication
        units = ("pixel", *np.asarray(image_layer.units, dtype=object)[list(yx)])
        added.append(viewer.add_image(maps, name=name, visible=visible, metadata={"ddunet_derived": True},
                                      units=units, **kwargs))
    raise_grid(viewer)
    viewer.layers.selection.active = added[-1] if added else image_layer
    return added


def add_comparison(viewer, image_layer, yx, shape: tuple[int, ...], info: Any, result: Any, output: str | None):
    """The image again, to the right, with the labels of the run without communication over it."""
    ya, xa = yx
    scale = np.asarray(image_layer.scale)[[ya, xa]]
    translate = np.asarray(image_layer.translate)[[ya, xa]]
    shift = translate + np.array([0.0, (shape[xa] + max(16, shape[xa] // 50)) * scale[1]])
    image_name = f"{image_layer.name} (no communication view)"
    name = f"{image_layer.name} labels without communication"
    for old in (image_name, name):
        if old in viewer.layers:
            viewer.layers.remove(old)
    full_translate = np.asarray(image_layer.translate, dtype=float).copy()
    full_translate[[ya, xa]] = shift
    viewer.add_image(
        image_layer.data,
        name=image_name,
        multiscale=image_layer.multiscale,
        rgb=image_layer.rgb,
        colormap=image_layer.colormap,
        contrast_limits=image_layer.contrast_limits,
        scale=image_layer.scale,
        translate=full_translate,
        units=image_layer.units,
        metadata={"ddunet_derived": True},
    )
    data, multiscale = labels_layer_data(result.labels, output=output)
    labels = viewer.add_labels(
        data,
        name=name,
        multiscale=multiscale,
        colormap=label_colormap(info.class_colors),
        scale=scale,
        translate=shift,
        units=tuple(np.asarray(image_layer.units, dtype=object)[[ya, xa]]),
        opacity=0.6,
        metadata={"ddunet_derived": True},
    )
    viewer.reset_view()
    viewer.layers.selection.active = image_layer
    return labels
