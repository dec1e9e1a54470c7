"""The subdomain grid drawn over the image as a napari Shapes layer of lines.

napari puts pixel centres on integer coordinates, so the edge between pixel ``k*h - 1`` and
pixel ``k*h`` is at ``k*h - 0.5``: that is where the lines go.
"""

from __future__ import annotations

import math

import numpy as np

GRID_LAYER_NAME = "DDU-Net subdomain grid"
#: Beyond this many subdomains the "(r, c)" texts are left out: napari would slow to a crawl.
MAX_INDEX_LABELS = 2000


def grid_shape(image_yx: tuple[int, int], subdomain_size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of subdomains covering the image (the last ones padded by the engine)."""
    return math.ceil(image_yx[0] / subdomain_size[0]), math.ceil(image_yx[1] / subdomain_size[1])


def grid_lines(image_yx: tuple[int, int], subdomain_size: tuple[int, int]) -> list[np.ndarray]:
    """Horizontal then vertical lines, each a (2, 2) array of (y, x) end points in image pixels."""
    rows, cols = grid_shape(image_yx, subdomain_size)
    h, w = subdomain_size
    top, left, bottom, right = -0.5, -0.5, rows * h - 0.5, cols * w - 0.5
    horizontal = [np.array([[r * h - 0.5, left], [r * h - 0.5, right]]) for r in range(rows + 1)]
    vertical = [np.array([[top, c * w - 0.5], [bottom, c * w - 0.5]]) for c in range(cols + 1)]
    return horizontal + vertical


def grid_labels(image_yx: tuple[int, int], subdomain_size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Centres of the subdomains (N, 2) and their "(r, c)" indices, row-major like the engine."""
    rows, cols = grid_shape(image_yx, subdomain_size)
    h, w = subdomain_size
    centres = np.array([[r * h + (h - 1) / 2, c * w + (w - 1) / 2] for r in range(rows) for c in range(cols)])
    return centres.reshape(-1, 2), [f"({r}, {c})" for r in range(rows) for c in range(cols)]


def update_grid_layer(viewer, image_layer, subdomain_size: tuple[int, int], yx_axes: tuple[int, int]):
    """Create or redraw the grid layers over ``image_layer``; returns (lines layer, index points layer or None).

    The indices are a Points layer with invisible points and text, because a Shapes layer can only
    put text at its shapes, which would label lines instead of subdomains. Grids of more than
    :data:`MAX_INDEX_LABELS` subdomains get lines only.
    """
    shape = image_layer.data.shape if not image_layer.multiscale else image_layer.data[0].shape
    image_yx = (int(shape[yx_axes[0]]), int(shape[yx_axes[1]]))
    scale = np.asarray(image_layer.scale)[list(yx_axes)]
    translate = np.asarray(image_layer.translate)[list(yx_axes)]
    lines = grid_lines(image_yx, subdomain_size)
    width = max(1.0, min(subdomain_size) / 64)
    font = float(np.clip(min(subdomain_size) / 12, 6, 14))
    index_name = GRID_LAYER_NAME + " indices"
    rows, cols = grid_shape(image_yx, subdomain_size)
    if GRID_LAYER_NAME in viewer.layers:
        layer = viewer.layers[GRID_LAYER_NAME]
        layer.data = lines
        layer.edge_width = width
    else:
        layer = viewer.add_shapes(
            lines, shape_type="line", edge_color="yellow", edge_width=width, name=GRID_LAYER_NAME, opacity=0.8
        )
    layer.scale, layer.translate = scale, translate
    # A Points layer given a new number of points redraws its text with the old indices before its
    # features follow ("index 64 is out of bounds ..."): a new count gets a new layer.
    count = rows * cols
    if index_name in viewer.layers and (count > MAX_INDEX_LABELS or len(viewer.layers[index_name].data) != count):
        viewer.layers.remove(index_name)
    if rows * cols > MAX_INDEX_LABELS:
        return layer, None
    centres, texts = grid_labels(image_yx, subdomain_size)
    text = {"string": "{index}", "color": "yellow", "size": font, "anchor": "center"}
    if index_name in viewer.layers:
        points = viewer.layers[index_name]
        points.data = centres
        points.text = text
    else:
        points = viewer.add_points(
            centres,
            features={"index": texts},
            text=text,
            size=1,
            face_color="transparent",
            border_color="transparent",
            name=index_name,
            opacity=0.9,
        )
    points.scale, points.translate = scale, translate
    return layer, points


def remove_grid_layers(viewer) -> None:
    """Take the grid lines and their indices off the viewer."""
    for name in (GRID_LAYER_NAME, GRID_LAYER_NAME + " indices"):
        if name in viewer.layers:
            viewer.layers.remove(name)
