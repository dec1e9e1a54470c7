"""Input formats: compressed TIFF through imagecodecs, PNG and JPEG, an unreadable file refused before any
output exists, and a GeoTIFF input giving a GeoTIFF labels output with the same georeferencing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_ddunet import DDUNet, ModelConfig, save_checkpoint, segment
from napari_ddunet.cli import main
from napari_ddunet.core.io import geotiff
from napari_ddunet.core.io.images import InputError, open_image


def _checkpoint(path: Path, channels: int, image: np.ndarray) -> Path:
    torch.manual_seed(0)
    model = DDUNet(ModelConfig(in_channels=channels, num_classes=3, depth=2, base_channels=2, comm_features=0)).eval()
    pixels = image.reshape(-1, channels).astype(np.float64)
    stats = {"mean": pixels.mean(0).tolist(), "std": (pixels.std(0) + 1).tolist()}
    return save_checkpoint(path, model, class_names=["ground", "tree", "road"], normalization=stats,
                           class_colors=[(0, 0, 0, 0), (0, 0.6, 0, 1), (0.5, 0.5, 0.5, 1)], subdomain_size=(64, 64))


@pytest.fixture(scope="module")
def aerial(realdata_aerial_rgb) -> np.ndarray:
    """A 128 x 160 crop of a real NEON aerial RGB orthophoto (uint8 YXS)."""
    return tifffile.imread(realdata_aerial_rgb)[:128, :160]


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory, aerial) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "rgb.pt", 3, aerial)


@pytest.mark.parametrize(("compression", "tag"), [("lzw", "LZW"), ("zlib", "ADOBE_DEFLATE"), ("zstd", "ZSTD"),
                                                   ("jpeg", "JPEG")])
def test_compressed_tiff_gives_the_labels_of_its_pixels(tmp_path, aerial, rgb_checkpoint, compression, tag):
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, aerial, compression=compression, tile=(64, 64), photometric="rgb")
    decoded = tifffile.imread(path)  # JPEG is lossy: the reference is what the file holds
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression.name == tag
    np.testing.assert_array_equal(segment(str(path), str(rgb_checkpoint)), segment(decoded, str(rgb_checkpoint)))


def test_real_lzw_geotiff_with_overviews(realdata_compressed_tiff, tmp_path):
    source = open_image(realdata_compressed_tiff, channels=[2, 1, 0])
    assert source.shape == (1482, 1489)
    expected = tifffile.imread(realdata_compressed_tiff)[1400:, 1430:, [2, 1, 0]]
    np.testing.assert_array_equal(source.read(1400, 1482, 1430, 1489), np.moveaxis(expected, 2, 0))


def test_png_and_jpeg_inputs_through_cli_and_library(tmp_path, aerial, rgb_checkpoint):
    Image.fromarray(aerial).save(tmp_path / "a.png")
    Image.fromarray(aerial).save(tmp_path / "a.jpg", quality=90)
    rgba = np.dstack([aerial, np.full(aerial.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    reference = segment(aerial, str(rgb_checkpoint))
    np.testing.assert_array_equal(segment(str(tmp_path / "a.png"), str(rgb_checkpoint)), reference)
    # the declared alpha band of an RGBA PNG is left out for an RGB model
    np.testing.assert_array_equal(segment(str(tmp_path / "rgba.png"), str(rgb_checkpoint)), reference)
    out = tmp_path / "jpg.zarr"
    assert main(["predict", str(rgb_checkpoint), str(tmp_path / "a.jpg"), str(out), "--quiet"]) == 0
    from napari_ddunet.core.inference.sink import open_output

    decoded = np.asarray(Image.open(tmp_path / "a.jpg"))
    np.testing.assert_array_equal(open_output(out)["labels"][...], segment(decoded, str(rgb_checkpoint)))
    # a 16-bit grey PNG (as microscope snapshots are saved) keeps its values and dtype
    gray = (aerial[..., 1].astype(np.uint16) * 257)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    source = open_image(tmp_path / "gray16.png")
    assert source.dtype == np.uint16 and source.channels == 1
    np.testing.assert_array_equal(source.read(0, 128, 0, 160)[0], gray)


def _refused(capsys, args: list[str], match: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_undecodable_files_are_one_line_and_write_nothing(tmp_path, aerial, rgb_checkpoint, capsys):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, aerial, compression="lzw", tile=(64, 64), photometric="rgb")
    data = full.read_bytes()
    (tmp_path / "truncated.tif").write_bytes(data[: len(data) * 2 // 3])
    with tifffile.TiffFile(full) as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset
    codec = bytearray(data)
    codec[offset:offset + 2] = (65000).to_bytes(2, "little")   # a codec no library here knows
    (tmp_path / "codec.tif").write_bytes(bytes(codec))
    for name in ("truncated.tif", "codec.tif"):
        out = tmp_path / f"{name}.zarr"
        _refused(capsys, ["predict", str(rgb_checkpoint), str(tmp_path / name), str(out), "--quiet"], "cannot")
        assert not out.exists()


def _georeferenced(path: Path, image: np.ndarray, source: Path) -> Path:
    """``image`` written with the georeferencing tags of the GeoTIFF ``source``."""
    reference = geotiff.read_georeference(source)
    tifffile.imwrite(path, image, compression="lzw", photometric="rgb", extratags=reference.extratags())
    return path


def test_geotiff_in_geotiff_out(tmp_path, aerial, rgb_checkpoint, realdata_aerial_rgb, capsys):
    image = _georeferenced(tmp_path / "scene.tif", aerial, realdata_aerial_rgb)
    out = tmp_path / "labels.tif"
    assert main(["predict", str(rgb_checkpoint), str(image), str(out), "--quiet"]) == 0
    store = tmp_path / "labels.zarr"
    from napari_ddunet.core.inference.sink import open_output

    labels = open_output(store)["labels"][...]
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.compression.name == "LZW"
        np.testing.assert_array_equal(page.asarray(), labels)
        written = {code: page.tags[code].value for code in geotiff.GEO_TAGS if code in page.tags}
    with tifffile.TiffFile(realdata_aerial_rgb) as tif:
        original = {code: tif.pages[0].tags[code].value for code in geotiff.GEO_TAGS if code in tif.pages[0].tags}
    assert written == original and 33550 in written
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(realdata_aerial_rgb) as a, rasterio.open(out) as b:
        assert a.transform == b.transform and a.crs == b.crs and a.crs is not None
        assert b.colormap(1)[1] == (0, 153, 0, 255)
    # --format geotiff next to a zarr OUTPUT; an existing GeoTIFF is never replaced without --overwrite
    assert main(["predict", str(rgb_checkpoint), str(image), str(tmp_path / "b.zarr"), "--format", "geotiff",
                 "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b.tif"), labels)
    capsys.readouterr()
    before = out.read_bytes()
    _refused(capsys, ["predict", str(rgb_checkpoint), str(image), str(out), "--quiet"], "exists")
    assert out.read_bytes() == before


def test_geotiff_output_needs_a_georeferenced_2d_input(tmp_path, aerial, rgb_checkpoint, capsys, realdata_aerial_rgb):
    tifffile.imwrite(tmp_path / "plain.tif", aerial, photometric="rgb")
    _refused(capsys, ["predict", str(rgb_checkpoint), str(tmp_path / "plain.tif"), str(tmp_path / "o.tif"),
                      "--quiet"], "no GeoTIFF georeferencing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.tif"]
    reference = geotiff.read_georeference(realdata_aerial_rgb)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([aerial[..., 0]] * 2), extratags=reference.extratags())
    _refused(capsys, ["predict", str(rgb_checkpoint), str(tmp_path / "stack.tif"), str(tmp_path / "s.tif"),
                      "--quiet"], "stack of 2 planes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.tif", "stack.tif"]
    with pytest.raises(InputError):
        open_image(tmp_path / "missing.png")
