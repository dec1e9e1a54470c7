"""``python -m training.train --normalization`` records the value range and the mode; ``predict`` compares and applies.

On the real uint16 HeLa frame (``realdata_fluorescence_uint16``) and its "8-bit" version: a model trained on the
uint8 image, given the uint16 one, warns on stderr (one line naming the fix) and with ``--normalization
percentile`` gives the labels of the uint8 image; a model trained with ``--normalization percentile`` takes
either without a warning and gives the same labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_ddunet.cli import main as cli
from napari_ddunet.core.checkpoints.format import load_checkpoint
from napari_ddunet.core.inference.sink import open_output
from napari_ddunet.core.io import normalization as nz
from training import datasets, train

TINY = ["--dataset", "folder", "--depth", "2", "--base-channels", "4", "--comm-features", "0", "--batch-size", "4",
        "--threads", "1", "--quiet", "--grid", "2", "2", "--subdomain-size", "32", "32", "--samples-per-epoch", "48",
        "--epochs", "4", "--min-epochs", "4", "--eval-samples", "2", "--lr", "0.01", "--num-classes", "2"]


@pytest.fixture(scope="module")
def frames(realdata_fluorescence_uint16, realdata_fluorescence_labels) -> dict[str, np.ndarray]:
    """A 256 x 384 crop of the frame: uint16 as recorded, its 8-bit version (min..max onto 0..255), nuclei."""
    uint16 = tifffile.imread(realdata_fluorescence_uint16)[:256, :384]
    low, high = float(uint16.min()), float(uint16.max())
    uint8 = np.round((uint16 - low) / (high - low) * 255).astype(np.uint8)
    nuclei = (tifffile.imread(realdata_fluorescence_labels)[:256, :384] > 0).astype(np.uint8)
    return {"uint16": uint16, "uint8": uint8, "nuclei": nuclei}


def write_folder(root: Path, image: np.ndarray, mask: np.ndarray) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tifffile.imwrite(root / "images" / "hela.tif", image)
    tifffile.imwrite(root / "masks" / "hela.tif", mask)
    return root


@pytest.fixture(scope="module")
def trained(frames, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints trained on the uint8 image (global mode) and on the uint16 one (percentile mode)."""
    out = {}
    for name, image, mode in (("global", frames["uint8"], "global"), ("percentile", frames["uint16"], "percentile")):
        root = tmp_path_factory.mktemp(name)
        data = write_folder(root / "data", image, frames["nuclei"])
        assert train.main([*TINY, "--data", str(data), "--output", str(root / "run"), "--normalization", mode]) == 0
        out[name] = root / "run" / "best.pt"
    return out


def predict(checkpoint: Path, image: np.ndarray, tmp_path: Path, name: str, capsys, *flags: str):
    """Labels of ``napari-ddunet predict`` and its warning lines on stderr."""
    source = tmp_path / f"{name}.tif"
    tifffile.imwrite(source, image)
    out = tmp_path / f"{name}.zarr"
    capsys.readouterr()
    assert cli(["predict", str(checkpoint), str(source), str(out), "--devices", "cpu", "--quiet", *flags]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    return np.asarray(open_output(out)["labels"]), lines


def test_the_checkpoint_records_dtype_percentiles_and_mode(trained, frames):
    norm = load_checkpoint(trained["global"]).info.normalization
    assert norm.mode == "global" and norm.dtype == "uint8"
    # one small image: the statistics see every pixel
    np.testing.assert_allclose([norm.p1[0], norm.p99[0]], np.percentile(frames["uint8"], [1, 99]), rtol=1e-12)
    assert (norm.minimum[0], norm.maximum[0]) == (frames["uint8"].min(), frames["uint8"].max())
    scaled = load_checkpoint(trained["percentile"]).info.normalization
    assert scaled.mode == "percentile" and scaled.dtype == "uint16"
    # each image prescaled by the p1..p99 of its lattice sample (what predict samples), then all its pixels
    image = frames["uint16"]
    a, b = nz.image_prescale("percentile", lambda y0, y1, x0, x1: image[None, y0:y1, x0:x1], image.shape, image.dtype)
    np.testing.assert_allclose([scaled.p1[0], scaled.p99[0]], np.percentile((image - a[0]) / b[0], [1, 99]),
                               rtol=1e-12)


def test_uint16_into_the_uint8_model_warns_and_percentile_gives_its_labels(trained, frames, tmp_path, capsys):
    wanted, lines = predict(trained["global"], frames["uint8"], tmp_path, "u8", capsys)
    assert lines == [] and 0.05 < wanted.mean() < 0.95            # nuclei and background
    silent, lines = predict(trained["global"], frames["uint16"], tmp_path, "u16", capsys)
    assert len(lines) == 1 and "--normalization percentile" in lines[0] and "uint16" in lines[0]
    fixed, lines = predict(trained["global"], frames["uint16"], tmp_path, "fixed", capsys,
                           "--normalization", "percentile")
    assert len(lines) == 1 and "overrides the global normalisation" in lines[0]
    agree = (fixed == wanted).mean()
    assert agree >= 0.98 and agree > (silent == wanted).mean()
    iou = (fixed.astype(bool) & frames["nuclei"].astype(bool)).sum() / (fixed.astype(bool) | frames["nuclei"]).sum()
    assert iou > 0.3     # a few epochs of a tiny net: the nuclei, roughly


def test_a_percentile_model_takes_either_dtype(trained, frames, tmp_path, capsys):
    from_16, lines16 = predict(trained["percentile"], frames["uint16"], tmp_path, "p16", capsys)
    from_8, lines8 = predict(trained["percentile"], frames["uint8"], tmp_path, "p8", capsys)
    assert lines16 == lines8 == []
    assert (from_16 == from_8).mean() >= 0.98
    attrs = open_output(tmp_path / "p8.zarr")["attrs"]["normalization"]
    assert attrs["mode"] == "percentile" and attrs["image"]["dtype"] == "uint8"


def test_prescales_of_the_training_images(frames, tmp_path):
    data = write_folder(tmp_path / "data", frames["uint16"], frames["nuclei"])
    task = datasets.pairs_task(data, "folder", (64, 64), seed=0, augment=False, mode="dtype")
    image, _ = task.test[0]
    np.testing.assert_allclose(image[0].numpy(), frames["uint16"][:64, :64] / 65535, rtol=1e-6)
    assert task.normalization()["mode"] == "dtype" and task.value_range.maximum[0] <= 1.0
    syn = datasets.synthetic_task((1, 2), (32, 32), seed=0, sizes=(4, 1, 1), mode="percentile")
    item = datasets.synthetic_task((1, 2), (32, 32), seed=0, sizes=(4, 1, 1)).train[1][0].numpy()
    a, b = nz.image_prescale("percentile", lambda y0, y1, x0, x1: item[:, y0:y1, x0:x1], item.shape[1:], item.dtype)
    np.testing.assert_allclose(syn.train[1][0].numpy(), (item - a[0]) / b[0], rtol=1e-6)
