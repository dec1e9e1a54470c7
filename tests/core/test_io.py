"""Lazy image sources: TIFF, OME-Zarr, zarr, dask, channel layouts, dtypes, NaN/inf reports; the layout
rule, the opener and the OME label pyramid."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_ddunet.core.io.images import InputError, check_finite, open_image, open_levels
from napari_ddunet.core.io.layout import infer_channel_axis, yx_axes
from napari_ddunet.core.io.ome import (
    downsample_mode,
    downsample_mode_lazy,
    label_colors,
    labels_metadata,
    pyramid_levels,
)


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(50, 70, 3), dtype=np.uint8)


def test_layouts_and_reflected_reads(rgb):
    yxc = open_image(rgb, in_channels=3)
    cyx = open_image(np.moveaxis(rgb, -1, 0).copy(), in_channels=3)
    assert yxc.shape == cyx.shape == (50, 70) and yxc.channels == 3
    np.testing.assert_array_equal(yxc.read(10, 20, 30, 45), cyx.read(10, 20, 30, 45))
    np.testing.assert_array_equal(yxc.read(10, 20, 30, 45), np.moveaxis(rgb[10:20, 30:45], -1, 0))
    padded = np.pad(np.moveaxis(rgb, -1, 0).astype(float), ((0, 0), (0, 14), (0, 10)), mode="reflect")
    np.testing.assert_array_equal(yxc.read(32, 64, 40, 80), padded[:, 32:64, 40:80])
    gray = open_image(rgb[..., 0], in_channels=1)
    assert gray.read(0, 2, 0, 2).shape == (1, 2, 2) and gray.read(0, 2, 0, 2).dtype == np.float64


def test_band_count_mismatches_fail_and_a_selection_feeds_the_model(rgb):
    four = np.concatenate([rgb, np.full((50, 70, 1), 255, np.uint8)], axis=-1)   # no alpha marked: 4 bands
    with pytest.raises(InputError, match=r"image has 4 bands \(YXC, shape \(50, 70, 4\)\), the model expects 3"):
        open_image(four, in_channels=3)
    source = open_image(four, in_channels=3, channels=(0, 1, 2))
    assert source.channels == 3
    np.testing.assert_array_equal(source.read(0, 5, 0, 5), np.moveaxis(rgb[:5, :5], -1, 0))
    with pytest.raises(InputError, match=r"image has 3 bands \(YXC, shape \(50, 70, 3\)\), the model expects 1"):
        open_image(rgb, in_channels=1)
    with pytest.raises(InputError, match=r"1 band \(YX\), the model expects 3.*--channels 0 0 0"):
        open_image(rgb[..., 0], in_channels=3)
    with pytest.raises(InputError, match="dimensionality"):
        open_image(np.zeros((2, 3, 10, 10)), in_channels=1)
    with pytest.raises(InputError, match="cannot tell the channel axis"):
        open_image(np.zeros((20, 24, 28)), in_channels=1)
    with pytest.raises(InputError, match="pixel type"):
        open_image(np.zeros((10, 12), dtype=complex), in_channels=1)
    assert open_image(np.zeros((10, 12, 14)), in_channels=14, channel_axis=-1).channels == 14


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float16, np.float32, np.float64])
def test_any_int_or_float_dtype(dtype):
    image = (np.arange(60).reshape(6, 10) % 50).astype(dtype)
    np.testing.assert_array_equal(open_image(image, in_channels=1).read(0, 6, 0, 10)[0], image.astype(float))


def test_tiff_is_read_lazily_with_its_axes(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(32, 32))
    source = open_image(tmp_path / "rgb.tif", in_channels=3)
    assert isinstance(source.array, zarr.Array)       # tifffile's zarr store, not a loaded array
    assert source.shape == (50, 70)
    np.testing.assert_array_equal(source.read(5, 45, 3, 66), np.moveaxis(rgb[5:45, 3:66], -1, 0))
    planar = np.moveaxis(rgb, -1, 0).copy()
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(open_image(str(tmp_path / "planar.tif"), in_channels=3).read(0, 50, 0, 70), planar)


def test_ome_zarr_level0_and_plain_zarr(tmp_path, rgb):
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    data = np.moveaxis(rgb, -1, 0)[None, :, None]           # t, c, z, y, x
    root.create_array("s0", data=data, chunks=(1, 1, 1, 32, 32))
    root.create_array("s1", data=data[..., ::2, ::2])
    axes = [{"name": n, "type": t} for n, t in zip("tczyx", ["time", "channel", "space", "space", "space"],
                                                     strict=True)]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [{"path": "s0"},
                                                                                       {"path": "s1"}]}]}
    source = open_image(tmp_path / "img.ome.zarr", in_channels=3)
    assert source.shape == (50, 70) and source.channel_axis == 0
    np.testing.assert_array_equal(source.read(0, 50, 0, 70), np.moveaxis(rgb, -1, 0))
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(50, 70), chunks=(16, 16), dtype="u2")
    plain[...] = rgb[..., 0]
    np.testing.assert_array_equal(open_image(str(tmp_path / "plain.zarr"), in_channels=1).read(0, 50, 0, 70)[0],
                                  rgb[..., 0])
    lazy = da.from_array(rgb, chunks=(16, 16, 3))
    np.testing.assert_array_equal(open_image(lazy, in_channels=3).read(0, 50, 0, 70), np.moveaxis(rgb, -1, 0))


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        open_image(tmp_path / "nope.tif")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match="unsupported input format"):
        open_image(tmp_path / "x.bmp")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"cannot read .*x\.png"):
        open_image(tmp_path / "x.png")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00junk")
    with pytest.raises(InputError, match="cannot read TIFF"):
        open_image(tmp_path / "bad.tif")


def test_nan_and_inf_are_counted_and_located():
    image = np.zeros((2, 3000, 40), dtype=np.float32)
    image[1, 2500, 7] = np.inf
    image[0, 2900, 1] = np.nan
    with pytest.raises(InputError, match=r"2 NaN/inf values; first at \(y=2500, x=7, channel 1\)"):
        check_finite(open_image(image, in_channels=2))
    check_finite(open_image(np.zeros((5, 5), dtype=np.uint8), in_channels=1))
    lazy = da.from_array(image[0], chunks=(700, 40))
    with pytest.raises(InputError, match=r"1 NaN/inf value; first at \(y=2900, x=1"):
        check_finite(open_image(lazy, in_channels=1))


def test_rgb_layer_with_a_unit_leading_axis_opens_with_the_inferred_channel_axis(rgb):
    """Defect: napari's RGB layer of shape (1, H, W, 3) got channel axis 3, which the engine rejected."""
    layer = rgb[None]
    axis = infer_channel_axis(layer.shape, rgb=True, in_channels=3)
    assert axis == 3 and yx_axes(layer.ndim, axis) == (1, 2)
    source = open_image(layer, in_channels=3, channel_axis=axis)
    assert source.shape == (50, 70) and source.channels == 3
    np.testing.assert_array_equal(source.read(0, 50, 0, 70), np.moveaxis(rgb, -1, 0))
    planar = np.moveaxis(rgb, -1, 0)[None, None]                     # (1, 1, C, H, W)
    assert infer_channel_axis(planar.shape, in_channels=3) == 2
    np.testing.assert_array_equal(open_image(planar, in_channels=3, channel_axis=2).read(0, 50, 0, 70),
                                  np.moveaxis(rgb, -1, 0))


@pytest.mark.parametrize(("shape", "kwargs", "expected"), [
    ((50, 70), {}, None),
    ((50, 70, 3), {}, 2),
    ((3, 50, 70), {}, 0),
    ((4, 50, 3), {"in_channels": 4}, 0),           # the model's channel count decides between two short axes
    ((4, 50, 3), {}, 2),                           # else the last axis first
    ((50, 70, 4), {"in_channels": 3}, 2),          # a short last axis holds bands, whatever the model takes
    ((1, 50, 70), {}, 0),
    ((1, 1, 50, 70), {}, 1),                       # leading unit axes dropped while more than 3 remain
    ((20, 24, 28), {}, None),                      # no short axis: the engine asks for one
    ((1, 50, 70, 3), {"rgb": True}, 3),
    ((1, 2, 1, 50, 70), {"axes_names": list("tczyx")}, 1),
])
def test_one_channel_axis_rule(shape, kwargs, expected):
    assert infer_channel_axis(shape, **kwargs) == expected


def test_opener_gives_every_level_axes_and_pixel_size(tmp_path, rgb):
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    data = np.moveaxis(rgb, -1, 0)
    root.create_array("0", data=data)
    root.create_array("1", data=data[:, ::2, ::2])
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5 * 2**i,
                                                                                           0.25 * 2**i]}]}
                for i in range(2)]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ["c", "y", "x"], "datasets": datasets}]}
    opened = open_levels(tmp_path / "img.ome.zarr")
    assert [level.shape for level in opened.levels] == [(3, 50, 70), (3, 25, 35)]
    assert opened.axes == ["c", "y", "x"] and opened.scale == (1.0, 0.5, 0.25)
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tiff:
        tiff.write(rgb, subifds=1, tile=(32, 32))
        tiff.write(rgb[::2, ::2], subfiletype=1, tile=(32, 32))
    opened = open_levels(tmp_path / "pyramid.tif")
    assert [level.shape for level in opened.levels] == [(50, 70, 3), (25, 35, 3)] and opened.axes == ["y", "x", "c"]
    assert len(open_levels(rgb).levels) == 1


def test_one_label_pyramid_and_its_metadata_round_trip():
    import dask.array as da

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (45, 62)).astype(np.uint8)
    lazy = downsample_mode_lazy(da.from_array(labels, chunks=(16, 20)))
    padded = np.pad(labels, ((0, 1), (0, 0)), mode="edge")
    np.testing.assert_array_equal(lazy.compute(), downsample_mode(padded))
    assert pyramid_levels((600, 520)) == 4 and pyramid_levels((600, 520), whole=(96, 96)) == 4
    assert pyramid_levels((600, 520), whole=(100, 100)) == 3 and pyramid_levels((63, 40)) == 1
    colors = {0: [0, 0, 0, 0], 2: [0, 0, 1, 1]}
    meta = labels_metadata("seg", 3, colors, source="../")
    assert [d["path"] for d in meta["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    assert {k: list(v) for k, v in label_colors({"ome": meta}).items()} == colors
