"""GeoTIFF in, GeoTIFF out: the georeferencing of an input TIFF, and labels written with the same one.

A GeoTIFF places its pixels on the Earth with a few TIFF tags (GeoTIFF 1.1): ModelPixelScale and
ModelTiepoint (or one ModelTransformation) and the GeoKeyDirectory with its double and ASCII
parameters, which name the CRS. Labels cover the input's pixel grid one to one, so copying those tags
verbatim onto the labels puts them where QGIS, GDAL and rasterio put the image. The labels GeoTIFF is
written from the engine's zarr store after the run, tile by tile (never whole), LZW-compressed as GDAL
writes by default, with the checkpoint's class colours as its palette.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_ddunet.core.errors import DDUNetError

#: The tags that georeference a GeoTIFF, by code.
GEO_TAGS = {
    33550: "ModelPixelScale",
    33922: "ModelTiepoint",
    34264: "ModelTransformation",
    34735: "GeoKeyDirectory",
    34736: "GeoDoubleParams",
    34737: "GeoAsciiParams",
}
#: Tags that place the pixels; without one of them a file has no georeferencing.
PLACING_TAGS = (33550, 33922, 34264)
#: Tile side of the written GeoTIFF (GDAL's default block size for tiled output).
TILE = 256
#: Output suffixes that mean "write a GeoTIFF".
GEOTIFF_SUFFIXES = (".tif", ".tiff")


class GeoTIFFError(DDUNetError):
    """A GeoTIFF output that cannot be made as asked (no georeferencing, a file in the way)."""


@dataclass(frozen=True)
class Georeference:
    """The georeferencing tags of a TIFF: (code, TIFF data type, count, value) each, as the file has them."""

    tags: tuple[tuple[int, int, int, Any], ...]
    shape: tuple[int, int]
    source: str

    def extratags(self) -> list[tuple[int, int, int, Any, bool]]:
        """The tags as tifffile's ``extratags``, written once into the first page."""
        return [(code, dtype, count, value, True) for code, dtype, count, value in self.tags]

    def value(self, code: int) -> Any:
        return next((value for tag, _, _, value in self.tags if tag == code), None)


def read_georeference(path: str | Path) -> Georeference | None:
    """The georeferencing of the TIFF at ``path`` (first page), or None when it has none or is no TIFF."""
    import tifffile

    path = Path(path)
    if not path.is_file() or not path.name.lower().endswith(GEOTIFF_SUFFIXES):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = tuple((code, int(page.tags[code].dtype), int(page.tags[code].count), page.tags[code].value)
                         for code in GEO_TAGS if code in page.tags)
            shape = (int(page.imagelength), int(page.imagewidth))
    except Exception:
        return None
    if not any(code in PLACING_TAGS for code, *_ in tags):
        return None
    return Georeference(tags, shape, str(path))


@dataclass(frozen=True)
class GeoTIFFExport:
    """Where a run that ends in a GeoTIFF writes: its zarr store, the GeoTIFF, and the georeferencing."""

    store: Path
    tiff: Path
    georeference: Georeference


def wants_geotiff(output: str | Path, format: str | None) -> bool:
    """Whether ``output`` asks for a GeoTIFF: ``--format geotiff``, or a .tif/.tiff output."""
    return format == "geotiff" or Path(output).name.lower().endswith(GEOTIFF_SUFFIXES)


def plan_export(image: Any, output: str | Path, *, overwrite: bool) -> GeoTIFFExport:
    """Check, before any work, that a GeoTIFF can be written for ``image``; touches nothing.

    OUTPUT ``labels.tif`` runs into the store ``labels.zarr`` beside it (resumable, with the pyramid and
    any probabilities) and writes ``labels.tif`` from it; OUTPUT ``labels.zarr`` writes ``labels.tif`` beside it.
    """
    output = Path(output)
    tiff_out = output.name.lower().endswith(GEOTIFF_SUFFIXES)
    store = output.with_suffix(".zarr") if tiff_out else output
    tiff = output if tiff_out else output.with_suffix(".tif")
    if not isinstance(image, str | Path):
        raise GeoTIFFError("a GeoTIFF output needs a GeoTIFF input file to take its georeferencing from")
    georeference = read_georeference(image)
    if georeference is None:
        raise GeoTIFFError(f"{image} has no GeoTIFF georeferencing (ModelPixelScale/ModelTiepoint or "
                           "ModelTransformation tags); write a zarr store instead")
    planes = _planes(Path(image))
    if planes > 1:
        raise GeoTIFFError(f"{image} is a stack of {planes} planes; a GeoTIFF output holds one 2D labels image, "
                           "write a zarr store instead")
    if tiff.resolve() == Path(image).resolve():
        raise GeoTIFFError(f"the GeoTIFF output {tiff} is the input; choose another output")
    if tiff.exists() and not overwrite:
        raise GeoTIFFError(f"output {tiff} exists; pass --overwrite to replace it")
    if tiff.exists() and not tiff.is_file():
        raise GeoTIFFError(f"output {tiff} exists and is not a file; refusing to replace it")
    return GeoTIFFExport(store, tiff, georeference)


def _planes(path: Path) -> int:
    """How many 2D planes (t, z and other non-band axes) the first series of a TIFF holds."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        return int(np.prod([size for axis, size in zip(series.axes, series.shape, strict=True)
                            if axis not in "YXCS"], dtype=np.int64))


def _compression() -> str:
    """LZW, GDAL's and QGIS's usual compression; tifffile encodes it only through imagecodecs."""
    import imagecodecs

    if not imagecodecs.LZW.available:
        raise GeoTIFFError("this imagecodecs build cannot encode LZW; reinstall imagecodecs")
    return "lzw"


def _palette(colors: Sequence[Sequence[float]] | None, dtype: np.dtype) -> np.ndarray | None:
    """A TIFF colour map (3, 2**bits) uint16 of the class colours, for uint8 labels; None otherwise."""
    if not colors or dtype != np.uint8:
        return None
    palette = np.zeros((3, 256), dtype=np.uint16)
    for value, rgba in enumerate(colors[:256]):
        palette[:, value] = [round(float(c) * 65535) for c in list(rgba)[:3]]
    return palette


def _tiles(labels: Any) -> Iterator[np.ndarray]:
    """The labels' TILE x TILE tiles in row-major order, read one at a time (tifffile zero-pads the edges)."""
    height, width = labels.shape
    for y0 in range(0, height, TILE):
        for x0 in range(0, width, TILE):
            yield np.asarray(labels[y0:y0 + TILE, x0:x0 + TILE])


def write_labels(labels: Any, path: str | Path, georeference: Georeference,
                 colors: Sequence[Sequence[float]] | None = None) -> Path:
    """Write the 2D ``labels`` (a zarr or numpy array over the input's pixel grid) as a tiled,
    LZW-compressed GeoTIFF with ``georeference``'s tags; returns the path."""
    import tifffile

    shape = tuple(int(s) for s in labels.shape)
    if len(shape) != 2:
        raise GeoTIFFError(f"a GeoTIFF holds one 2D labels image, these labels have shape {shape}")
    if shape != georeference.shape:
        raise GeoTIFFError(f"labels of shape {shape} do not cover the {georeference.shape} pixel grid of "
                           f"{georeference.source}")
    dtype = np.dtype(labels.dtype)
    palette = _palette(colors, dtype)
    path = Path(path)
    tifffile.imwrite(
        path, _tiles(labels), shape=shape, dtype=dtype, tile=(TILE, TILE), compression=_compression(),
        photometric="palette" if palette is not None else "minisblack", colormap=palette,
        extratags=georeference.extratags(), metadata=None,
    )
    return path

