"""Inputs that used to end in a traceback or in silent garbage: one line, exit 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_ddunet import save_checkpoint, segment
from napari_ddunet.cli import main
from napari_ddunet.core.io.images import InputError


@pytest.fixture
def checkpoint(tmp_path, make_model):
    return save_checkpoint(tmp_path / "m.pt", make_model(), subdomain_size=(16, 16))


def _predict(capsys, checkpoint, image, out) -> tuple[int, list[str]]:
    code = main(["predict", str(checkpoint), str(image), str(out), "--quiet", "--devices", "cpu"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_float64_pixels_beyond_float32_are_refused_unless_computed_in_float64(tmp_path, make_model, capsys,
                                                                              checkpoint):
    """1e300 became inf in the float32 cast: labels of garbage with exit 0."""
    image = np.random.default_rng(0).random((32, 32))
    image[5, 7] = 1e300
    np.save(tmp_path / "big.npy", image)
    code, lines = _predict(capsys, checkpoint, tmp_path / "big.npy", tmp_path / "out.zarr")
    assert code == 2 and len(lines) == 1 and "beyond float32's range (up to 1e+300)" in lines[0]
    assert "--float64" in lines[0] and not (tmp_path / "out.zarr").exists()
    with pytest.raises(InputError, match="1 value beyond float32"):
        segment(image, make_model(), subdomain_size=(16, 16))
    labels = segment(image, make_model(), subdomain_size=(16, 16), dtype=torch.float64)
    assert labels.shape == (32, 32)


@pytest.mark.parametrize("multiscales", [
    [{"axes": "nonsense", "datasets": 7}],
    [{"axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": ["a", None]}]}]}],
    [{"axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"nopath": "0"}]}],
])
def test_malformed_ome_metadata_is_one_line(tmp_path, capsys, checkpoint, multiscales):
    store = tmp_path / "bad.ome.zarr"
    group = zarr.open_group(str(store), mode="w")
    group.create_array("0", shape=(32, 32), dtype="f4")
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    code, lines = _predict(capsys, checkpoint, store, tmp_path / "out.zarr")
    assert code == 2 and len(lines) == 1 and "malformed OME-Zarr metadata" in lines[0], lines
    assert not (tmp_path / "out.zarr").exists()
