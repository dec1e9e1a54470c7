"""Pixel size, origin and units travel from the input (OME-Zarr, OME-TIFF, ImageJ TIFF, a napari layer's
values) into the store's OME-Zarr coordinateTransformations, so labels lie over their image in OME-Zarr viewers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_ddunet import DDUNet, ModelConfig, save_checkpoint, segment
from napari_ddunet.cli import main
from napari_ddunet.core.inference.sink import open_output
from napari_ddunet.core.io import ome
from napari_ddunet.core.io.images import open_image, open_levels
from napari_ddunet.plugin.reader import read

TASK = "background-nucleus"


def write_ome_zarr(path: Path, image: np.ndarray, pixel: float, origin: tuple[float, float] = (0.0, 0.0)) -> Path:
    """A two-level OME-Zarr 0.5 image at ``pixel`` micrometres per pixel, as microscopy converters write it."""
    root = zarr.open_group(str(path), mode="w")
    levels = [image, image[::2, ::2]]
    datasets = []
    for level, data in enumerate(levels):
        root.create_array(str(level), data=np.ascontiguousarray(data), chunks=(64, 64))
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [pixel * 2 ** level] * 2},
            {"type": "translation", "translation": [origin[0] + (2 ** level - 1) / 2 * pixel,
                                                    origin[1] + (2 ** level - 1) / 2 * pixel]}]})
    axes = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": "nuclei", "axes": axes, "datasets": datasets}]}
    return path


@pytest.fixture(scope="module")
def fluorescence(realdata_fluorescence_uint16) -> np.ndarray:
    """A 128 x 192 crop of a real uint16 widefield image of HeLa nuclei."""
    return tifffile.imread(realdata_fluorescence_uint16)[200:328, 300:492]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fluorescence) -> Path:
    torch.manual_seed(0)
    model = DDUNet(ModelConfig(in_channels=1, num_classes=2, depth=2, base_channels=2, comm_features=0)).eval()
    stats = {"mean": [float(fluorescence.mean())], "std": [float(fluorescence.std())]}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "nuclei.pt", model, class_names=["background", "nucleus"],
                           class_colors=[(0, 0, 0, 0), (1, 0.5, 0, 1)], normalization=stats, subdomain_size=(64, 64))


def _scales(group) -> list[tuple[list[float], list[float]]]:
    entry = ome.multiscales(dict(group.attrs))
    found = []
    for dataset in entry["datasets"]:
        transforms = {t["type"]: t for t in dataset["coordinateTransformations"]}
        found.append((transforms["scale"]["scale"], transforms.get("translation", {}).get("translation", [0, 0])))
    return found


def test_ome_zarr_at_065_um_gives_labels_at_065_um(tmp_path, fluorescence, checkpoint):
    image = write_ome_zarr(tmp_path / "nuclei.ome.zarr", fluorescence, 0.65, origin=(13.0, 26.0))
    out = tmp_path / "out.zarr"
    assert main(["predict", str(checkpoint), str(image), str(out), "--quiet"]) == 0
    root = zarr.open_group(str(out), mode="r")
    child = root[f"labels/{TASK}"]
    for group in (root, root["labels"], child):
        levels = _scales(group)
        assert levels[0] == ([0.65, 0.65], [13.0, 26.0])
        # each level's pixel doubles and sits on the centre of the block it summarises
        assert levels[1] == ([1.3, 1.3], [13.325, 26.325])
        units = [axis.get("unit") for axis in ome.multiscales(dict(group.attrs))["axes"]]
        assert units == ["micrometer", "micrometer"]
    np.testing.assert_array_equal(child["0"][...], root["labels/0"][...])
    np.testing.assert_array_equal(child["1"][...], root["labels/1"][...])
    assert root.attrs["napari_ddunet"]["calibration"]["scale"] == [0.65, 0.65]
    # our reader places image and labels identically
    [(_, image_meta, _)] = read(str(image))
    [(_, label_meta, kind)] = read(str(out))
    assert kind == "labels"
    for key in ("scale", "translate", "units"):
        assert label_meta[key] == image_meta[key]


def test_store_validates_and_ome_zarr_readers_show_the_labels(tmp_path, fluorescence, checkpoint):
    image = write_ome_zarr(tmp_path / "nuclei.ome.zarr", fluorescence, 0.65)
    out = tmp_path / "out.zarr"
    segment(str(image), str(checkpoint), output=out)
    root = zarr.open_group(str(out), mode="r")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    assert Image.from_zarr(root).attributes.ome.multiscales[0].datasets[0].path == "labels/0"
    ImageLabel.from_zarr(root["labels"])
    label = ImageLabel.from_zarr(root[f"labels/{TASK}"])
    assert [c.rgba for c in label.attributes.ome.image_label.colors] == [(0, 0, 0, 0), (255, 128, 0, 255)]
    from napari_ome_zarr._reader import napari_get_reader

    layers = napari_get_reader(str(out))()
    [(data, meta, _)] = [layer for layer in layers if layer[2] == "labels"]
    assert meta["visible"] is True and meta["name"].startswith(TASK)
    assert meta["scale"] == [0.65, 0.65] and meta["units"] == ("micrometer", "micrometer")
    np.testing.assert_allclose(meta["colormap"][1], [1.0, 128 / 255, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(data[0]), open_output(out)["labels"][...])
    # the root's class-index image comes hidden; no file appears outside the store
    [(_, image_meta, _)] = [layer for layer in layers if layer[2] == "image"]
    assert image_meta["visible"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.ome.zarr", "out.zarr"]
    assert not (tmp_path.parent / "zarr.json").exists()


def test_ome_tiff_and_imagej_tiff_calibration(tmp_path, fluorescence, checkpoint):
    tifffile.imwrite(tmp_path / "ome.ome.tif", fluorescence, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    tifffile.imwrite(tmp_path / "ij.tif", fluorescence, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"unit": "um", "axes": "YX"})
    tifffile.imwrite(tmp_path / "scan.tif", fluorescence, resolution=(300, 300), resolutionunit="INCH")
    ome_tiff = open_image(tmp_path / "ome.ome.tif").calibration
    assert ome_tiff.scale == (0.25, 0.5) and ome_tiff.units == ("micrometer", "micrometer")
    imagej = open_image(tmp_path / "ij.tif").calibration
    np.testing.assert_allclose(imagej.scale, (0.325, 0.325))
    assert imagej.units == ("micrometer", "micrometer")
    tifffile.imwrite(tmp_path / "ij1.tif", fluorescence, imagej=True, resolution=(1, 1), metadata={"unit": "um"})
    assert open_image(tmp_path / "ij1.tif").calibration.units == ("micrometer", "micrometer")  # 1 um/px is one
    # dots per inch of a scan are no pixel size
    assert open_image(tmp_path / "scan.tif").calibration is None
    out = tmp_path / "out.zarr"
    segment(str(tmp_path / "ome.ome.tif"), str(checkpoint), output=out)
    assert _scales(zarr.open_group(str(out), mode="r")["labels"])[0] == ([0.25, 0.5], [0, 0])


def test_napari_layer_values_and_old_stores(tmp_path, fluorescence, checkpoint):
    out = tmp_path / "out.zarr"
    segment(fluorescence, str(checkpoint), output=out,
            calibration={"scale": [2.0, 3.0], "translate": [5.0, 7.0], "units": ["nm", "nm"]})
    labels = zarr.open_group(str(out), mode="r")["labels"]
    assert _scales(labels)[0] == ([2.0, 3.0], [5.0, 7.0])
    assert open_levels(labels).calibration.units == ("nanometer", "nanometer")
    with pytest.raises(Exception, match="calibration"):
        segment(fluorescence, str(checkpoint), calibration={"scale": [0.0, 1.0]})
    # a store written before label images existed (no labels/<task>, no key) still resumes
    root = zarr.open_group(str(out), mode="r+")
    del root[f"labels/{TASK}"]
    attrs = dict(root.attrs["napari_ddunet"])
    del attrs["label_image"]
    root.attrs["napari_ddunet"] = attrs
    root["_work/done"][0, 0] = 0
    before = root["labels/0"][...]
    segment(fluorescence, str(checkpoint), output=out, resume=True)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels/0"][...], before)
    assert f"labels/{TASK}/0" not in zarr.open_group(str(out), mode="r")


def test_calibration_rules():
    cal = ome.Calibration.of_axes(("z", "y", "x"), (2.0, 0.5, 0.5), (0, 1.0, 1.0), ("µm", "micron", "\\u00B5m"))
    assert cal.units == ("micrometer",) * 3
    level = cal.downsampled(2)
    assert level.scale == (2.0, 2.0, 2.0) and level.translate == (0.0, 1.75, 1.75)
    assert cal.select(("y", "x", "c")).scale == (0.5, 0.5, 1.0)
    assert ome.unit_name("pixel") is None and ome.unit_name("furlong") == "furlong"
    assert ome.Calibration.from_dict(cal.to_dict()) == cal
    assert ome.task_name(["0", "1"]) == "0-1" and ome.task_name(["7"]) == "labels_7"
    with pytest.raises(ValueError, match="positive"):
        ome.Calibration.of_axes(("y", "x"), (1.0, -1.0))
