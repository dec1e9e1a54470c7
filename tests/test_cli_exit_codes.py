"""Exit codes that mean one thing: 0 done, 2 bad input, 3 an I/O fault during the run (resumable),
130 cancelled or interrupted (resumable), 1 only for a bug (the one case with a traceback)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_ddunet import save_checkpoint, segment
from napari_ddunet.cli import EXIT_BUG, EXIT_CANCELLED, EXIT_IO_FAULT, EXIT_USAGE, build_parser, main
from napari_ddunet.core.inference.sink import open_output

SUB = ["16", "16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    import torch

    from napari_ddunet import DDUNet, ModelConfig

    root = tmp_path_factory.mktemp("exit_codes")
    torch.manual_seed(0)
    model = DDUNet(ModelConfig(in_channels=1, num_classes=3, depth=2, base_channels=2, comm_features=4,
                               dropout=0.0)).double().eval()
    save_checkpoint(root / "m.pt", model, subdomain_size=(16, 16))
    image = np.random.default_rng(0).normal(size=(12 * 16, 8 * 16))
    np.save(root / "img.npy", image)
    return {"root": root, "ckpt": root / "m.pt", "npy": root / "img.npy", "image": image, "model": model}


def predict(files, out: Path, *extra: str, sub: list[str] = SUB) -> list[str]:
    return ["predict", str(files["ckpt"]), str(files["npy"]), str(out), "--subdomain-size", *sub, "--quiet",
            "--devices", "cpu", "--float64", "--logits", *extra]


def done_count(out: Path) -> int:
    return int(np.asarray(open_output(out)["done"][...]).sum())


def test_the_help_documents_the_exit_codes():
    predict_help = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    for line in ("0    done", "2    bad input", "3    an I/O fault during the run", "130  cancelled or interrupted",
                 "1    a bug"):
        assert line in predict_help
    assert "--resume" in predict_help.split("exit status:")[1]


def test_a_full_disk_exits_3_with_one_line_naming_resume_and_the_store_resumes(files, tmp_path):
    """RLIMIT_FSIZE (8 KB) makes the first logits chunk (12 KB compressed) fail with EFBIG, as a full disk would; the
    store's metadata files (about 6 KB) fit."""
    out = tmp_path / "out.zarr"
    args = predict(files, out, sub=["32", "32"])

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    proc = subprocess.run([sys.executable, "-m", "napari_ddunet.cli", *args], preexec_fn=small_files,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_IO_FAULT, proc.stderr[-2000:]
    errors = [line for line in lines if line.startswith("napari-ddunet predict:")]   # after the run's first message
    assert errors == lines[-1:] and "I/O error: File too large" in errors[0] and "--resume" in errors[0], lines
    assert "Traceback" not in proc.stderr
    assert done_count(out) < 6 * 4
    assert main([*args, "--resume"]) == 0
    stored = open_output(out)
    assert stored["attrs"]["complete"] is True
    np.testing.assert_array_equal(stored["labels"][...],
                                  segment(files["image"], files["model"], subdomain_size=(32, 32)))


def test_ctrl_c_cancels_with_130_and_the_store_resumes(files, tmp_path):
    """Ctrl-C sets the run's cancel event: it stops after the work in flight, exit 130, resumable. SIGSTOP holds
    the run mid-way while the SIGINT is sent, so the signal always lands before the run ends."""
    out = tmp_path / "out.zarr"
    args = predict(files, out, "--schedule", "wavefront")
    proc = subprocess.Popen([sys.executable, "-m", "napari_ddunet.cli", *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (out / "zarr.json").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_CANCELLED, err[-2000:]
    assert "Traceback" not in err
    assert f"cancelled; {out} is resumable with --resume" in err.strip().splitlines()[-1]
    assert open_output(out)["attrs"]["complete"] is False and done_count(out) < 12 * 8
    assert main([*args, "--resume"]) == 0
    np.testing.assert_array_equal(open_output(out)["labels"][...],
                                  segment(files["image"], files["model"], subdomain_size=(16, 16)))


def _unsampled_chunk(shape: tuple[int, int], side: int) -> tuple[int, int]:
    """A chunk that the checks before the run (the resume fingerprint's sample blocks, the decode check's
    first, middle and last pixels) never read, so that only the run itself meets it."""
    from napari_ddunet.core.inference.fingerprint import sample_blocks

    read = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in sample_blocks(shape):
        read[y0:y1, x0:x1] = True
    for y, x in ((0, 0), (shape[0] // 2, shape[1] // 2), (shape[0] - 1, shape[1] - 1)):
        read[y, x] = True
    free = [(r, c) for r in range(shape[0] // side) for c in range(shape[1] // side)
            if not read[r * side:(r + 1) * side, c * side:(c + 1) * side].any()]
    assert free, "every chunk is sampled before the run"
    return free[0]


def test_an_unreadable_input_chunk_exits_3_with_one_line(files, tmp_path, capsys):
    """A truncated chunk that no check before the run reads fails during the run: one line, exit 3, the
    store resumable; in a float image the NaN scan meets it before anything is written: bad input, exit 2."""
    import zarr

    for dtype in ("u2", "f8"):
        source = tmp_path / f"{dtype}.zarr"
        array = zarr.create_array(str(source), shape=(256, 256), chunks=(16, 16), dtype=dtype)
        array[...] = np.arange(256 * 256).reshape(256, 256) % 1000
        chunk = source / "c" / "/".join(str(i) for i in _unsampled_chunk((256, 256), 16))
        chunk.write_bytes(chunk.read_bytes()[:20])
        out = tmp_path / f"{dtype}-out.zarr"
        code = main(["predict", str(files["ckpt"]), str(source), str(out), "--subdomain-size", "32", "32",
                     "--quiet", "--devices", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("napari-ddunet predict:")]
        assert code == (EXIT_IO_FAULT if dtype == "u2" else EXIT_USAGE) and errors == err[-1:], err
        assert f"cannot read {source} at y=" in errors[0] and "Traceback" not in "".join(err)
        if dtype == "u2":
            assert "--resume" in errors[0] and open_output(out)["attrs"]["complete"] is False
        else:
            assert not out.exists() and "--resume" not in errors[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{root}/nope.pt"],
        ["bench", "--subdomain", "7"],
        ["demo", "--model", "{root}/nope.pt"],
        ["predict", "{root}/m.pt", "{root}/img.npy", "{root}/img.npy"],
        ["predict", "{root}/m.pt", "{root}/img.npy", "{root}/o.zarr", "--resume", "--overwrite"],
    ],
)
def test_bad_input_of_every_command_exits_2_with_one_line(files, capsys, argv):
    assert main([a.format(root=files["root"]) for a in argv]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: " in err[0], err


def test_a_bad_option_exits_2():
    with pytest.raises(SystemExit) as caught:
        main(["predict", "--no-such-option"])
    assert caught.value.code == EXIT_USAGE


def test_only_a_bug_exits_1_and_prints_a_traceback(files, capsys, monkeypatch):
    from napari_ddunet.commands import info

    def broken(args):
        return {}["a bug"]

    monkeypatch.setattr(info, "run", broken)
    assert main(["info", str(files["ckpt"])]) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "a bug in napari-ddunet" in err
