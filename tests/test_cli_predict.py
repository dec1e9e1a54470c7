"""``napari-ddunet predict``: output, bad input (exit 2, one line, existing output untouched), kill + resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_ddunet import DDUNet, ModelConfig, save_checkpoint
from napari_ddunet.cli import main
from napari_ddunet.core.inference.sink import open_output
from store_digest import digest

SUB = ["16", "24"]


def _model(**changes) -> DDUNet:
    values = {"in_channels": 1, "num_classes": 3, "depth": 2, "base_channels": 2, "comm_features": 4,
              "dropout": 0.0}
    values.update(changes)
    torch.manual_seed(0)
    return DDUNet(ModelConfig(**values)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    ckpt = save_checkpoint(root / "m.pt", _model(), subdomain_size=(16, 24),
                           normalization={"mean": [0.5], "std": [2.0]})
    rng = np.random.default_rng(0)
    image = rng.normal(size=(75, 161)).astype(np.float32)
    np.save(root / "img.npy", image)
    tifffile.imwrite(root / "img.tif", image)
    nan = image.copy()
    nan[10, 20] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "rgb.npy", rng.normal(size=(75, 161, 3)))
    np.save(root / "4d.npy", np.zeros((2, 2, 40, 40)))
    (root / "broken.tif").write_bytes(b"II*\x00garbage")
    (root / "afile").write_text("not a folder")
    return {"root": root, "ckpt": ckpt, "npy": root / "img.npy", "tif": root / "img.tif", "image": image}



def test_predict_writes_ome_zarr(files, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert main(["predict", str(files["ckpt"]), str(files["tif"]), str(out), "--subdomain-size", *SUB,
                 "--probabilities", "--features", "--quiet"]) == 0
    stored = open_output(out)
    assert stored["labels"].shape == (75, 161)
    assert stored["probabilities"].shape == (3, 75, 161)
    assert stored["bottleneck"].shape == (4, 19, 41)
    assert stored["attrs"]["complete"] is True
    group = zarr.open_group(str(out / "labels"), mode="r")
    ome = group.attrs["ome"]
    assert [d["path"] for d in ome["multiscales"][0]["datasets"]] == ["0", "1"]
    assert len(ome["image-label"]["colors"]) == 3
    # other OME-Zarr readers accept it: the 0.5 spec models, and ome-zarr-py sees a multiscale label image
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image_label import ImageLabel

    assert [d.path for d in ImageLabel.from_zarr(group).attributes.ome.multiscales[0].datasets] == ["0", "1"]
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    node = next(n for n in Reader(parse_url(str(out / "labels")))() if n.data)
    assert any(isinstance(spec, Label) for spec in node.specs)
    assert [tuple(d.shape) for d in node.data] == [(75, 161), (38, 81)]
    # same result from the array in memory, with the checkpoint path and its stored subdomain size
    from napari_ddunet import segment

    labels = segment(files["image"], str(files["ckpt"]))
    np.testing.assert_array_equal(stored["labels"][...], labels)
    assert "schedule" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["{root}/missing.npy"], "input not found"),
        (["{root}/broken.tif"], "cannot read TIFF"),
        (["{root}/rgb.npy"], "image has 3 bands .*the model expects 1; choose bands with --channels"),
        (["{root}/4d.npy"], "unsupported dimensionality"),
        (["{root}/nan.npy"], "1 NaN/inf value; first at \\(y=10, x=20"),
        (["{npy}", "--subdomain-size", "18", "24"], "multiple of 2\\*\\*depth"),
        (["{npy}", "--subdomain-size", "96", "24"], "larger than"),
        (["{npy}", "--devices", "cuda:3"], "not available"),
        (["{npy}", "--devices", "foo"], "unknown device"),
        (["{npy}", "--memory-budget", "much"], "memory budget"),
    ],
)
def test_bad_input_exit_2_one_line_output_untouched(files, tmp_path, capsys, args, match):
    out = tmp_path / "out.zarr"
    assert main(["predict", str(files["ckpt"]), str(files["npy"]), str(out), "--subdomain-size", *SUB,
                 "--quiet"]) == 0
    before = digest(out)
    capsys.readouterr()
    argv = [a.format(root=files["root"], npy=files["npy"]) for a in args]
    code = main(["predict", str(files["ckpt"]), argv[0], str(out), "--overwrite", "--quiet",
                 *(argv[1:] or ["--subdomain-size", *SUB])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert re.search(match, err[0]), err[0]
    assert digest(out) == before


def test_output_rules(files, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    base = ["predict", str(files["ckpt"]), str(files["npy"])]
    assert main([*base, str(out), "--subdomain-size", *SUB, "--quiet"]) == 0
    before = digest(out)
    capsys.readouterr()
    cases = [
        ([*base, str(out)], "exists; pass overwrite"),
        ([*base, str(tmp_path / "no" / "such" / "out.zarr")], "does not exist"),
        ([*base, str(files["root"] / "afile" / "out.zarr")], "not writable"),
        ([*base, str(files["root"] / "afile"), "--overwrite"], "not a zarr store"),
        (["predict", str(files["root"] / "nope.pt"), str(files["npy"]), str(out)], "checkpoint not found"),
    ]
    for argv, match in cases:
        assert main([*argv, "--subdomain-size", *SUB, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    assert digest(out) == before
    assert (files["root"] / "afile").read_text() == "not a folder"
    # the input itself is never an output, not even with --overwrite
    image_store = tmp_path / "in.zarr"
    zarr.create_array(str(image_store), shape=(75, 161), chunks=(32, 32), dtype="f4")[...] = files["image"]
    kept = digest(image_store)
    assert main(["predict", str(files["ckpt"]), str(image_store), str(image_store), "--overwrite", "--quiet"]) == 2
    assert "is (or contains) the input" in capsys.readouterr().err
    assert digest(image_store) == kept
    # told to: overwrite replaces it
    assert main([*base, str(out), "--subdomain-size", "32", "48", "--overwrite", "--quiet"]) == 0
    assert open_output(out)["attrs"]["subdomain_size"] == [32, 48]


def test_sigkill_then_resume_equals_uninterrupted(files, tmp_path):
    root = tmp_path
    torch.manual_seed(1)
    model = _model(base_channels=4)
    ckpt = save_checkpoint(root / "m.pt", model, subdomain_size=(16, 24))
    image = np.random.default_rng(2).normal(size=(12 * 16, 16 * 24))
    np.save(root / "big.npy", image)
    args = [str(ckpt), str(root / "big.npy"), "--subdomain-size", *SUB, "--float64", "--logits",
            "--schedule", "recompute", "--quiet", "--devices", "cpu"]
    out = root / "killed.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "napari_ddunet.cli", "predict", args[0], args[1], str(out),
                                *args[2:]], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        # one chunk file per finished subdomain: counting files is a cheap look at the progress record
        done = sum(not n.endswith(".partial") for _, _, names in os.walk(out / "_work" / "done" / "c") for n in names)
        if done >= 32:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    partial = int(np.asarray(open_output(out)["done"][...]).sum())
    assert 32 <= partial < 12 * 16
    assert main(["predict", args[0], args[1], str(out), *args[2:], "--resume"]) == 0
    whole = root / "whole.zarr"
    assert main(["predict", args[0], args[1], str(whole), *args[2:]]) == 0
    resumed, reference = open_output(out), open_output(whole)
    assert resumed["attrs"]["complete"] is True
    np.testing.assert_array_equal(resumed["labels"][...], reference["labels"][...])
    np.testing.assert_array_equal(resumed["labels/1"][...], reference["labels/1"][...])
    np.testing.assert_allclose(resumed["logits"][...], reference["logits"][...], rtol=0, atol=1e-10)
