"""``python -m training.train --channels``: any number of bands, chosen by index, recorded in the checkpoint.

Defect: the loader took at most 4 channels and told the user to pass a ``channel_axis`` that training
does not have. The images are crops of a real 10-band Landsat 8 scene (``realdata_multiband_uint16``).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_ddunet import segment
from napari_ddunet.core.checkpoints.format import load_checkpoint
from napari_ddunet.core.io.images import InputError
from training import train

TINY = ["--depth", "2", "--base-channels", "2", "--comm-features", "4", "--comm-layers", "1", "--batch-size", "2",
        "--threads", "1", "--quiet", "--grid", "2", "2", "--subdomain-size", "8", "8", "--samples-per-epoch", "2",
        "--epochs", "1", "--num-classes", "3"]


@pytest.fixture(scope="module")
def landsat(realdata_multiband_uint16) -> np.ndarray:
    """Two 40 x 48 crops of the 10-band scene, (2, 10, 40, 48) uint16, CYX like the file."""
    scene = tifffile.imread(realdata_multiband_uint16)
    return np.stack([scene[:, 100:140, 200:248], scene[:, 300:340, 400:448]])


def masks(crops: np.ndarray) -> np.ndarray:
    """Three classes from the red and NIR bands (water, bare, vegetation), as a lab would label them."""
    red, nir = crops[:, 3].astype(float), crops[:, 4].astype(float)
    ndvi = (nir - red) / (nir + red)
    return np.digitize(ndvi, np.quantile(ndvi, [1 / 3, 2 / 3])).astype(np.uint8)


def write_folder(root, crops: np.ndarray) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (crop, mask) in enumerate(zip(crops, masks(crops), strict=True)):
        tifffile.imwrite(root / "images" / f"c{i}.tif", crop, photometric="minisblack", planarconfig="separate")
        tifffile.imwrite(root / "masks" / f"c{i}.tif", mask)


def test_channels_picks_bands_in_order_and_the_checkpoint_records_them(tmp_path, landsat):
    write_folder(tmp_path / "data", landsat)
    out = tmp_path / "out"
    assert train.main([*TINY, "--dataset", "folder", "--data", str(tmp_path / "data"), "--output", str(out),
                       "--channels", "3", "2", "1"]) == 0
    info = load_checkpoint(out / "best.pt").info
    assert info.config.in_channels == 3
    assert info.provenance["training_args"]["channels"] == [3, 2, 1]
    chosen = landsat[:, [3, 2, 1]].astype(np.float64)
    np.testing.assert_allclose(info.normalization.mean, chosen.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(info.normalization.std, chosen.std(axis=(0, 2, 3)), rtol=1e-9)
    with pytest.raises(InputError, match=r"--channels 3 2 1 \(the bands the model was trained on\)"):
        segment(landsat[0], out / "best.pt")                           # predict names the training bands


def test_every_band_of_a_twenty_band_store_trains(tmp_path, landsat):
    """More bands than any guess allows, unnamed (plain zarr, CYX): the mask's shape tells the channel axis."""
    stacked = np.concatenate([landsat, landsat[:, ::-1] // 2], axis=1)           # (2, 20, 40, 48)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (crop, mask) in enumerate(zip(stacked, masks(landsat), strict=True)):
        zarr.save_array(str(root / "images" / f"c{i}.zarr"), crop)
        zarr.save_array(str(root / "masks" / f"c{i}.zarr"), mask)
    out = tmp_path / "out"
    assert train.main([*TINY, "--dataset", "zarr", "--data", str(root), "--output", str(out)]) == 0
    info = load_checkpoint(out / "best.pt").info
    assert info.config.in_channels == 20 and len(info.normalization.mean) == 20


def test_bad_band_choices_are_one_line(tmp_path, landsat, capsys):
    write_folder(tmp_path / "data", landsat)
    out = tmp_path / "out"
    assert train.main([*TINY, "--dataset", "folder", "--data", str(tmp_path / "data"), "--output", str(out),
                       "--channels", "3", "12", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c0.tif" in err[0] and "band 12 does not exist: the image has 10 bands" in err[0]
    (tmp_path / "data" / "images" / "c0.tif").unlink()
    tifffile.imwrite(tmp_path / "data" / "images" / "c0.tif", np.zeros((20, 40, 50), np.uint16))   # not 40 x 48
    assert train.main([*TINY, "--dataset", "folder", "--data", str(tmp_path / "data"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no axis of the (20, 40, 50) image holds bands around its mask's (40, 48)" in err[0]
    assert "--channel-axis" not in err[0]                               # training has no such option
    assert train.main([*TINY, "--dataset", "synthetic", "--output", str(out), "--channels", "0"]) == 2
    assert "--channels applies to --dataset folder or zarr" in capsys.readouterr().err
