"""The npe2 reader (zarr, OME-Zarr, TIFF; lazy, multiscale) and the OME-Zarr labels writer."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_ddunet.plugin.reader import napari_get_reader
from napari_ddunet.plugin.writer import write_labels


@pytest.fixture
def image():
    return np.random.default_rng(0).random((300, 200)).astype(np.float32)


def _read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None
    return reader(str(path))


def test_plain_zarr_is_lazy(tmp_path, image):
    zarr.create_array(str(tmp_path / "a.zarr"), data=image, chunks=(64, 64))
    [(data, meta, kind)] = _read(tmp_path / "a.zarr")
    assert isinstance(data, da.Array) and kind == "image" and meta["name"] == "a"
    assert data.chunksize == (64, 64)
    np.testing.assert_array_equal(data.compute(), image)


def test_ome_zarr_multiscale(tmp_path, image):
    group = zarr.open_group(str(tmp_path / "b.ome.zarr"), mode="w")
    levels = [image, image[::2, ::2], image[::4, ::4]]
    for i, level in enumerate(levels):
        group.create_array(str(i), data=level, chunks=(64, 64))
    scales = [{"type": "scale", "scale": [2**i] * 2} for i in range(3)]
    datasets = [{"path": str(i), "coordinateTransformations": [scales[i]]} for i in range(3)]
    axes = [{"name": "y"}, {"name": "x"}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    [(data, meta, kind)] = _read(tmp_path / "b.ome.zarr")
    assert meta["multiscale"] and meta["name"] == "b" and kind == "image"
    assert [d.shape for d in data] == [(300, 200), (150, 100), (75, 50)]
    assert all(isinstance(d, da.Array) for d in data)
    np.testing.assert_array_equal(data[2].compute(), image[::4, ::4])


def test_tiff_plain_and_pyramidal(tmp_path, image):
    tifffile.imwrite(tmp_path / "c.tif", image)
    [(data, meta, _)] = _read(tmp_path / "c.tif")
    assert not meta["multiscale"] and isinstance(data, da.Array)
    np.testing.assert_array_equal(data.compute(), image)
    with tifffile.TiffWriter(tmp_path / "d.tiff") as tiff:
        tiff.write(image, subifds=1, tile=(64, 64))
        tiff.write(image[::2, ::2], subfiletype=1, tile=(64, 64))
    [(data, meta, _)] = _read(tmp_path / "d.tiff")
    assert meta["multiscale"] and [d.shape for d in data] == [(300, 200), (150, 100)]
    np.testing.assert_array_equal(data[1].compute(), image[::2, ::2])


def test_reader_declines_other_files(tmp_path):
    assert napari_get_reader(str(tmp_path / "x.png")) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None


def test_writer_round_trip_keeps_labels_and_colours(tmp_path):
    from napari.utils.colormaps import DirectLabelColormap

    labels = np.zeros((600, 520), np.int32)
    labels[100:300, 50:400] = 2
    labels[400:, :100] = 1
    colormap = DirectLabelColormap(color_dict={None: [0, 0, 0, 0], 0: [0, 0, 0, 0], 1: [1, 0, 0, 1], 2: [0, 0, 1, 1]})
    [written] = write_labels(str(tmp_path / "seg.ome.zarr"), labels, {"name": "seg", "colormap": colormap})
    [(data, meta, kind)] = _read(written)
    assert kind == "labels" and meta["multiscale"]
    np.testing.assert_array_equal(np.asarray(data[0]), labels)
    np.testing.assert_array_equal(np.asarray(data[1]), labels[::2, ::2])
    np.testing.assert_allclose(meta["colormap"][2], [0, 0, 1, 1])


def test_napari_opens_files_through_the_plugin(make_napari_viewer, tmp_path, image):
    tifffile.imwrite(tmp_path / "e.tif", image)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "e.tif"), plugin="napari-ddunet")
    assert layer.name == "e" and layer.data.shape == image.shape


def test_writer_pyramid_equals_the_engines(tmp_path, make_model):
    from napari_ddunet import segment

    image = np.random.default_rng(2).random((256, 320))
    segment(image, make_model(), subdomain_size=(64, 64), output=tmp_path / "engine.zarr")
    engine = zarr.open_group(str(tmp_path / "engine.zarr"), mode="r")["labels"]
    [written] = write_labels(str(tmp_path / "napari.ome.zarr"), engine["0"][...], {"name": "labels"})
    napari_labels = zarr.open_group(written, mode="r")["labels"]
    levels = sorted(engine.array_keys(), key=int)
    assert levels == sorted(napari_labels.array_keys(), key=int) == ["0", "1", "2"]
    assert len(np.unique(engine["2"][...])) > 1
    for level in levels:
        np.testing.assert_array_equal(napari_labels[level][...], engine[level][...])
    ours, theirs = dict(napari_labels.attrs)["ome"], dict(engine.attrs)["ome"]
    assert ours["multiscales"][0]["datasets"] == theirs["multiscales"][0]["datasets"]
    assert ours["multiscales"][0]["metadata"] == theirs["multiscales"][0]["metadata"]
