"""``python -m training.train`` never replaces an earlier run silently, resumes only what it started, and
refuses bad labels with one line (issue 12 items 1 and 5)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from training import train

TINY = ["--depth", "2", "--base-channels", "2", "--comm-features", "4", "--comm-layers", "1", "--batch-size", "4",
        "--threads", "1", "--quiet"]
SYNTHETIC = ["--dataset", "synthetic", "--subdomains", "2", "--subdomain-size", "16", "16", "--train-size", "4",
             "--val-size", "4", "--test-size", "4", "--min-epochs", "1"]
PAIRS = ["--dataset", "zarr", "--grid", "2", "2", "--subdomain-size", "8", "8", "--samples-per-epoch", "4",
         "--epochs", "1"]
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "curves.png", "summary.json")


def _run(out, *extra) -> int:
    return train.main([*TINY, *SYNTHETIC, "--output", str(out), *extra])


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _contents(out) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in RUN_FILES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One epoch of a tiny run; tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _run(out, "--epochs", "1") == 0
    return out


@pytest.fixture
def earlier(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def test_an_earlier_run_is_not_replaced_without_a_flag(earlier, capsys):
    before = _contents(earlier)
    assert _run(earlier, "--epochs", "1") == 2
    line = _one_line(capsys)
    assert "already holds best.pt, last.pt, metrics.csv, curves.png, summary.json of an earlier run" in line
    assert "--resume" in line and "--overwrite" in line
    assert _contents(earlier) == before


def test_overwrite_replaces_only_the_trainer_files_and_only_once_training_starts(earlier, tmp_path, capsys):
    (earlier / "notes.txt").write_text("mine")
    before = _contents(earlier)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    # a run that fails before its first epoch leaves the earlier run as it was
    assert train.main([*TINY, "--dataset", "folder", "--data", str(empty), "--output", str(earlier),
                       "--overwrite"]) == 2
    assert "holds no" in _one_line(capsys)
    assert _contents(earlier) == before
    assert _run(earlier, "--epochs", "1", "--overwrite", "--seed", "1") == 0
    after = _contents(earlier)
    assert all(after[name] != before[name] for name in ("best.pt", "last.pt", "summary.json"))
    assert (earlier / "notes.txt").read_text() == "mine"
    assert not [p.name for p in earlier.iterdir() if p.name.endswith(".partial")]


def test_bad_output_flags_are_one_line(earlier, tmp_path, capsys):
    assert _run(earlier, "--resume", "--overwrite") == 2
    line = _one_line(capsys)
    assert "give --resume" in line and "--overwrite" in line and "not both" in line
    file = tmp_path / "file"
    file.write_text("x")
    assert _run(file) == 2
    assert _one_line(capsys) == f"error: --output {file} is a file, not a folder"


def test_resume_with_another_architecture_is_one_line(earlier, capsys):
    before = _contents(earlier)
    assert _run(earlier, "--epochs", "2", "--resume", "--comm-features", "2") == 2
    line = _one_line(capsys)
    assert f"--resume: {earlier / 'last.pt'} holds DDU-Net(2,4,Y) with comm_features=4, the options give " \
           "comm_features=2" in line
    assert _contents(earlier) == before


def test_resume_from_a_damaged_last_pt_is_one_line(earlier, capsys):
    last = earlier / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    assert _run(earlier, "--epochs", "2", "--resume") == 2
    assert "truncated or corrupt" in _one_line(capsys)
    last.write_bytes(b"not a checkpoint")
    assert _run(earlier, "--epochs", "2", "--resume") == 2
    assert "is not a napari-ddunet checkpoint" in _one_line(capsys)
    last.write_bytes(data)
    payload = torch.load(last, weights_only=True)
    payload["training_state"]["optimizer"] = {"state": {}, "param_groups": []}
    torch.save(payload, last)
    assert _run(earlier, "--epochs", "2", "--resume") == 2
    assert f"--resume: {last} holds a damaged training state" in _one_line(capsys)


def test_resume_continues_the_random_stream(tmp_path, monkeypatch):
    """The torch RNG at the start of epoch 2 is the same whether the run was resumed after epoch 1 or not."""
    seen: dict[str, list[torch.Tensor]] = {}
    original = train.Trainer.train_epoch_iter

    def recording(self, epoch):
        seen.setdefault(str(self.args.output), []).append(torch.get_rng_state())
        return original(self, epoch)

    monkeypatch.setattr(train.Trainer, "train_epoch_iter", recording)
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run(straight, "--epochs", "2") == 0
    assert _run(split, "--epochs", "1") == 0
    torch.manual_seed(12345)  # whatever the process did in between does not matter
    assert _run(split, "--epochs", "2", "--resume") == 0
    assert torch.equal(seen[str(straight)][1], seen[str(split)][1])


def _zarr_pairs(root, write_image_pairs, label: int, dtype=np.int16):
    import zarr

    write_image_pairs(root, "zarr")
    mask = np.zeros((40, 48), dtype=dtype)
    mask[5:9, 5:9] = label
    path = root / "masks" / "im1.zarr"
    shutil.rmtree(path)
    zarr.save_array(str(path), mask)
    return path


def test_negative_mask_labels_name_the_file(tmp_path, write_image_pairs, capsys):
    bad = _zarr_pairs(tmp_path / "data", write_image_pairs, -1)
    assert train.main([*TINY, *PAIRS, "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out")]) == 2
    assert _one_line(capsys) == f"error: {bad}: mask holds label -1; class labels are 0, 1, 2, ..."
    assert not (tmp_path / "out").exists()


def test_labels_beyond_num_classes_name_the_file(tmp_path, write_image_pairs, capsys):
    bad = _zarr_pairs(tmp_path / "data", write_image_pairs, 7, np.uint8)
    assert train.main([*TINY, *PAIRS, "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
                       "--num-classes", "3"]) == 2
    assert _one_line(capsys) == f"error: {bad}: mask holds label 7 but --num-classes is 3"
