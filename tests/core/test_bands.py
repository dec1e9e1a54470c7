"""Bands: never dropped or reordered silently; chosen by index, lazily, in the library and the CLI.

The images are real photographs (scikit-image's astronaut and camera) stacked into the band layouts
satellite scenes have: B, G, R, NIR in uint16, and 10- and 13-band scenes.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import tifffile
import torch
import zarr
from skimage import data as skdata
from zarr.storage import LoggingStore, MemoryStore

from napari_ddunet import DDUNet, ModelConfig, save_checkpoint, segment
from napari_ddunet.cli import main
from napari_ddunet.core.inference.sink import open_output
from napari_ddunet.core.io.images import InputError, choose_bands, open_image
from napari_ddunet.core.io.layout import infer_channel_axis

SUB = (16, 24)


@pytest.fixture(scope="module")
def bgrn() -> np.ndarray:
    """A (64, 72, 4) uint16 B, G, R, NIR scene: the astronaut's colour bands and the camera as NIR."""
    rgb = skdata.astronaut()[100:164, 200:272].astype(np.uint16) * 257
    nir = skdata.camera()[200:264, 200:272].astype(np.uint16) * 257
    return np.stack([rgb[..., 2], rgb[..., 1], rgb[..., 0], nir], axis=-1)


def bands(scene: np.ndarray, count: int) -> np.ndarray:
    """A (count, H, W) uint16 scene: the four bands of ``scene`` and their mixtures (distinct bands)."""
    planes = [scene[..., i % 4] // (1 + i // 4) + i for i in range(count)]
    return np.stack(planes).astype(np.uint16)


def model(in_channels: int, seed: int = 0) -> DDUNet:
    torch.manual_seed(seed)
    config = ModelConfig(in_channels=in_channels, num_classes=3, depth=2, base_channels=2, comm_features=4,
                         dropout=0.0)
    return DDUNet(config).double().eval()


def run(image, net, **kwargs):
    return segment(image, net, subdomain_size=SUB, dtype=torch.float64, logits=True, return_result=True, **kwargs)


# -- the layout rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "kwargs", "expected"), [
    ((10, 64, 72), {}, 0),                                   # 10-band Landsat, CYX
    ((64, 72, 13), {}, 2),                                   # 13-band Sentinel-2, YXC
    ((40, 64, 72), {}, None),                                # too long to guess ...
    ((40, 64, 72), {"in_channels": 40}, 0),                  # ... unless the model takes that many
    ((40, 64, 72), {"yx_shape": (64, 72)}, 0),               # ... or a training mask says which are y, x
    ((10, 64, 72), {"axes_names": list("zyx")}, None),       # a z axis holds planes, never bands
    ((64, 72, 5), {"axes_names": list("yxt")}, None),
])
def test_channel_axis_rule_for_many_bands(shape, kwargs, expected):
    assert infer_channel_axis(shape, **kwargs) == expected


# -- the opener ----------------------------------------------------------------------------------------


def test_four_bands_into_an_rgb_model_name_both_counts_and_the_choice(bgrn):
    """Defect: the NIR band was dropped as 'alpha' without a word, although the image has no alpha."""
    with pytest.raises(InputError) as caught:
        open_image(bgrn, in_channels=3)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("image has 4 bands (YXC, shape (64, 72, 4)), the model expects 3; choose bands "
                              "with --channels")
    assert message.endswith("e.g. --channels 0 1 2")
    source = open_image(bgrn, in_channels=3, channels=[2, 1, 0])
    assert source.channels == 3 and source.note == "bands 2, 1, 0 of 4"
    np.testing.assert_array_equal(source.read(0, 64, 0, 72), np.moveaxis(bgrn[..., [2, 1, 0]], -1, 0))
    assert open_image(bgrn, in_channels=4).bands is None                   # all bands, as stored


def test_band_choices_are_checked(bgrn):
    with pytest.raises(InputError, match=r"band 4 does not exist: the image has 4 bands \(--channels takes "
                                         r"indices 0\.\.3\)"):
        open_image(bgrn, in_channels=3, channels=(4, 1, 0))
    with pytest.raises(InputError, match="band -1 does not exist"):
        open_image(bgrn, in_channels=3, channels=(-1, 1, 0))
    with pytest.raises(InputError, match=r"2 bands chosen \(2 1\), the model expects 3"):
        open_image(bgrn, in_channels=3, channels=(2, 1))
    with pytest.raises(InputError, match="no bands chosen"):
        choose_bands(4, 3, ())
    grey = bgrn[..., 3]
    with pytest.raises(InputError, match=r"image has 1 band \(YX\), the model expects 3.*--channels 0 0 0"):
        open_image(grey, in_channels=3)
    source = open_image(grey, in_channels=3, channels=(0, 0, 0))             # grey into an RGB model, asked for
    np.testing.assert_array_equal(source.read(0, 8, 0, 8), np.repeat(grey[None, :8, :8], 3, axis=0))


def test_alpha_only_where_the_tiff_says_so(tmp_path, bgrn):
    rgb = bgrn[..., [2, 1, 0]]
    rgba = np.concatenate([rgb, np.full((64, 72, 1), 65535, np.uint16)], axis=-1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "premultiplied.tif", rgba, photometric="rgb", extrasamples=["assocalpha"])
    tifffile.imwrite(tmp_path / "bgrn.tif", bgrn, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(bgrn, -1, 0), photometric="minisblack",
                     planarconfig="separate")
    for name in ("rgba.tif", "premultiplied.tif"):
        source = open_image(tmp_path / name, in_channels=3)
        assert source.note == "bands 0..2 of 4 (band 3 is alpha)"
        np.testing.assert_array_equal(source.read(0, 64, 0, 72), np.moveaxis(rgb, -1, 0))
    assert open_image(tmp_path / "rgba.tif", in_channels=4).bands is None    # a model that takes alpha gets it
    for name, where in (("bgrn.tif", "YXC"), ("planar.tif", "CYX")):
        with pytest.raises(InputError, match=rf"image has 4 bands \({where}, .*the model expects 3"):
            open_image(tmp_path / name, in_channels=3)
        np.testing.assert_array_equal(open_image(tmp_path / name, in_channels=3, channels=(2, 1, 0)).read(0, 64, 0, 72),
                                      np.moveaxis(rgb, -1, 0))


def test_band_names_from_ome_zarr_and_ome_tiff_on_one_line(tmp_path, bgrn):
    cyx = np.moveaxis(bgrn, -1, 0)
    root = zarr.open_group(str(tmp_path / "scene.ome.zarr"), mode="w")
    root.create_array("0", data=cyx)
    names = ["blue", "green", "red", "near\ninfrared band of a very long name"]      # a file's text, untrusted
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ["c", "y", "x"], "datasets": [{"path": "0"}]}],
                         "omero": {"channels": [{"label": name} for name in names]}}
    with pytest.raises(InputError) as caught:
        open_image(tmp_path / "scene.ome.zarr", in_channels=3)
    assert "\n" not in str(caught.value)
    assert "0 blue, 1 green, 2 red, 3 near infrared band of...), the model expects 3" in str(caught.value)
    assert open_image(tmp_path / "scene.ome.zarr", in_channels=3, channels=(2, 1, 0)).note == \
        "bands 2, 1, 0 of 4 (red, green, blue)"
    tifffile.imwrite(tmp_path / "scene.ome.tif", cyx, ome=True, metadata={"axes": "CYX", "Channel": {
        "Name": ["B", "G", "R", "NIR"]}})
    assert open_image(tmp_path / "scene.ome.tif", in_channels=3, channels=(3, 2, 1)).note == \
        "bands 3, 2, 1 of 4 (NIR, R, G)"


def test_alpha_of_a_png_is_what_its_mode_says(tmp_path, bgrn):
    from PIL import Image

    rgb = (bgrn[..., [2, 1, 0]] // 257).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((64, 72, 1), 200, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "la.png")
    source = open_image(tmp_path / "rgba.png", in_channels=3)
    assert source.note == "bands 0..2 of 4 (band 3 is alpha)"
    np.testing.assert_array_equal(source.read(0, 64, 0, 72), np.moveaxis(rgb, -1, 0))
    assert open_image(tmp_path / "la.png", in_channels=1).note == "band 0 of 2 (band 1 is alpha)"


def _logged_store():
    """A zarr store that records the chunk keys read (zarr's own LoggingStore)."""
    keys: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r"Calling MemoryStore\.get\((c/[0-9/]+)\)", record.getMessage())
            if found:
                keys.append(found.group(1))

    store = LoggingStore(MemoryStore(), log_level="DEBUG")
    store.logger.addHandler(Record())          # LoggingStore skips its handler when pytest's is on the root
    return store, keys


@pytest.mark.parametrize("chosen", [(2, 1, 0), (7, 0, 3), (9,)])
def test_only_the_chosen_bands_are_read(bgrn, chosen):
    """Select on read: a CYX store chunked per band gives up only the chunks of the chosen bands."""
    scene = bands(bgrn, 10)
    store, keys = _logged_store()
    array = zarr.create_array(store, shape=scene.shape, chunks=(1, 32, 36), dtype=scene.dtype)
    array[...] = scene
    keys.clear()
    source = open_image(array, in_channels=len(chosen), channels=chosen)
    np.testing.assert_array_equal(source.read(0, 64, 0, 72), scene[list(chosen)].astype(float))
    assert {int(key.split("/")[1]) for key in keys} == set(chosen)


def test_channels_last_span_read_keeps_the_order(bgrn):
    scene = np.moveaxis(bands(bgrn, 13), 0, -1)                              # (H, W, 13) like Sentinel-2
    source = open_image(scene, in_channels=3, channels=(12, 3, 7))
    np.testing.assert_array_equal(source.read(5, 40, 6, 50), np.moveaxis(scene[5:40, 6:50, [12, 3, 7]], -1, 0))


# -- the library ---------------------------------------------------------------------------------------


def test_segment_with_channels_equals_the_preselected_image(bgrn):
    net = model(3)
    chosen = run(bgrn, net, channels=(2, 1, 0))
    ref = run(np.ascontiguousarray(bgrn[..., [2, 1, 0]]), net)
    np.testing.assert_allclose(np.asarray(chosen.logits), np.asarray(ref.logits), rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(chosen.labels), np.asarray(ref.labels))


def test_bands_of_a_stack_are_chosen_plane_by_plane(bgrn):
    """A Z stack of 4-band planes (CZYX) into an RGB model: the same bands of every plane."""
    planes = np.stack([bgrn, bgrn[::-1], bgrn[:, ::-1]])                        # (Z, Y, X, C)
    stack = np.ascontiguousarray(np.moveaxis(planes, -1, 0))                    # (C, Z, Y, X)
    net = model(3)
    labels = np.asarray(run(stack, net, axes="CZYX", channels=(2, 1, 0)).labels)
    for z, plane in enumerate(planes):
        np.testing.assert_array_equal(labels[z], np.asarray(run(np.ascontiguousarray(plane[..., [2, 1, 0]]),
                                                                 net).labels))


def test_thirteen_bands_in_the_checkpoint_and_the_engine(tmp_path, bgrn):
    scene = bands(bgrn, 13)
    path = save_checkpoint(tmp_path / "s2.pt", model(13), subdomain_size=SUB,
                           normalization={"mean": [float(b.mean()) for b in scene],
                                          "std": [float(b.std()) for b in scene]})
    from napari_ddunet import load_checkpoint

    net = load_checkpoint(path).double()
    assert net.config.in_channels == 13 and len(net.info.normalization.mean) == 13
    result = run(scene, net)                                    # CYX with 13 bands, guessed
    assert np.asarray(result.labels).shape == (64, 72)
    with pytest.raises(InputError, match=r"image has 4 bands .* the model expects 13"):
        run(bgrn, net)


def test_the_mismatch_line_offers_the_bands_the_model_was_trained_on(tmp_path, bgrn):
    path = save_checkpoint(tmp_path / "m.pt", model(3), subdomain_size=SUB, training_args={"channels": [2, 1, 0]})
    with pytest.raises(InputError, match=r"e\.g\. --channels 2 1 0 \(the bands the model was trained on\)$"):
        run(bgrn, path)
    with pytest.raises(InputError, match=r"e\.g\. --channels 0 0 0$"):         # a grey image lacks bands 1 and 2
        run(bgrn[..., 0], path)


def test_a_bad_choice_fails_before_the_output_exists(tmp_path, bgrn):
    out = tmp_path / "out.zarr"
    with pytest.raises(InputError, match="band 5 does not exist"):
        run(bgrn, model(3), channels=(5, 1, 0), output=out)
    assert not out.exists()


def test_resume_with_other_bands_is_refused(tmp_path, bgrn):
    from napari_ddunet.core.errors import DDUNetError

    out = tmp_path / "out.zarr"
    net = model(3)
    run(bgrn, net, channels=(2, 1, 0), output=out)
    run(bgrn, net, channels=(2, 1, 0), output=out, resume=True)
    with pytest.raises(DDUNetError, match=r"bands=\[2, 1, 0\], this run has \[0, 1, 2\]"):
        run(bgrn, net, channels=(0, 1, 2), output=out, resume=True)


# -- the CLI -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, bgrn):
    root = tmp_path_factory.mktemp("bands")
    ckpt = save_checkpoint(root / "rgb.pt", model(3).float(), subdomain_size=SUB)
    tifffile.imwrite(root / "bgrn.tif", bgrn, photometric="minisblack", tile=(32, 32))
    return root, ckpt


def test_predict_without_channels_is_one_line_and_writes_nothing(tmp_path, cli_files, capsys):
    root, ckpt = cli_files
    out = tmp_path / "out.zarr"
    assert main(["predict", str(ckpt), str(root / "bgrn.tif"), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image has 4 bands" in err[0] and "the model expects 3" in err[0]
    assert "--channels" in err[0]
    assert not out.exists()


def test_predict_channels_picks_bands_in_order(tmp_path, cli_files, capsys, bgrn):
    root, ckpt = cli_files
    out = tmp_path / "out.zarr"
    assert main(["predict", str(ckpt), str(root / "bgrn.tif"), str(out), "--channels", "2", "1", "0",
                 "--float64", "--quiet"]) == 0
    assert "bands 2, 1, 0 of 4" in capsys.readouterr().err
    from napari_ddunet import load_checkpoint

    ref = run(np.ascontiguousarray(bgrn[..., [2, 1, 0]]), load_checkpoint(ckpt).double())
    np.testing.assert_array_equal(np.asarray(open_output(out)["labels"][...]), np.asarray(ref.labels))
    assert main(["predict", str(ckpt), str(root / "bgrn.tif"), str(tmp_path / "bad.zarr"), "--channels", "3", "9",
                 "0", "--quiet"]) == 2
    assert "band 9 does not exist" in capsys.readouterr().err


# -- a real 10-band Landsat 8 scene (tests/realdata.py) ------------------------------------------------


def test_real_landsat_scene_through_the_cli_and_the_library(tmp_path, cli_files, capsys, realdata_multiband_uint16):
    """Defect: a 10-band scene could not be segmented at all (no way to choose bands)."""
    _, ckpt = cli_files
    scene = str(realdata_multiband_uint16)
    out = tmp_path / "rgb.zarr"
    assert main(["predict", str(ckpt), scene, str(out), "--subdomain-size", "64", "64", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image has 10 bands (CYX, shape (10, 603, 627); 0 B1, 1 B2, 2 B3, 3 B4, 4 B5" in err[0]
    assert "9 B11), the model expects 3" in err[0]                    # the file's band names, to choose by
    assert not out.exists()
    assert main(["predict", str(ckpt), scene, str(out), "--subdomain-size", "64", "64", "--channels", "3", "2", "1",
                 "--float64"]) == 0
    assert "bands 3, 2, 1 of 10 (B4, B3, B2)" in capsys.readouterr().err
    from napari_ddunet import load_checkpoint

    net = load_checkpoint(ckpt).double()
    rgb = np.ascontiguousarray(tifffile.imread(scene)[[3, 2, 1]])
    library = segment(realdata_multiband_uint16, net, subdomain_size=(64, 64), dtype=torch.float64, channels=(3, 2, 1))
    np.testing.assert_array_equal(np.asarray(library), segment(rgb, net, subdomain_size=(64, 64), dtype=torch.float64))
    np.testing.assert_array_equal(np.asarray(open_output(out)["labels"][...]), np.asarray(library))
