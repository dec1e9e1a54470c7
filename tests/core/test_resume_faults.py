"""Resume resumes exactly what was started: the store's fingerprint, a verified progress record, and faults
injected on every schedule (SIGKILL at seeded random points, damaged stores, a disk that fills), each
resumed to the uninterrupted float64 result bit for bit or refused with one line."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from engine_cases import SUB, image, tiny_model

from napari_ddunet import save_checkpoint
from napari_ddunet.cli import main
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.engine import segment, segment_iter
from napari_ddunet.core.inference.fingerprint import sample_blocks
from napari_ddunet.core.inference.sink import open_output
from store_digest import digest

GRID = 5 * 7
SCHEDULES = ("monolithic", "wavefront", "recompute", "streaming")
ARRAYS = ("labels/0", "labels/1", "logits", "communicated", "_work/bottleneck")

#: Runs ``napari-ddunet ARGS`` and, at the N-th written subdomain, SIGKILLs itself ("kill") or caps the size of
#: any file it writes at LIMIT bytes ("fill": RLIMIT_FSIZE, so later chunk writes fail with EFBIG like a full disk).
DRIVER = """
import os, resource, signal, sys
from napari_ddunet.cli import main
from napari_ddunet.core.inference import progress

mode, n, limit, argv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
real = progress.drive

def drive(events, callback=None, cancel=None):
    def hook(event):
        if callback is not None:
            callback(event)
        if event.phase == "write" and event.done == n:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return real(events, hook, cancel)

progress.drive = drive
sys.exit(main(argv))
"""


def chunk(store: Path, name: str, r: int, c: int) -> Path:
    """The file of subdomain (r, c) in array ``name`` (zarr v3 default chunk keys)."""
    lead = ["0"] if name in ("logits", "bottleneck", "communicated", "_work/bottleneck") else []
    return store.joinpath(name, "c", *lead, str(r), str(c))


def assert_same_store(got: Path, want: Path, features: bool = True) -> None:
    """Bit for bit: every label level, the logits and (with features) both bottleneck mosaics."""
    a, b = open_output(got), open_output(want)
    assert a["attrs"]["complete"] is True
    names = ["labels/0", "labels/1", "logits"] + (["bottleneck", "communicated"] if features else [])
    for name in names:
        np.testing.assert_array_equal(np.asarray(a[name][...]), np.asarray(b[name][...]), err_msg=name)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    ckpt = save_checkpoint(root / "m.pt", tiny_model(), subdomain_size=SUB)
    np.save(root / "img.npy", image())
    np.save(root / "other.npy", image(seed=7))
    return {"root": root, "ckpt": ckpt, "img": root / "img.npy", "other": root / "other.npy"}


def argv(files, out: Path, schedule: str = "wavefront", image_key: str = "img") -> list[str]:
    extra = ["--no-communication"] if schedule == "streaming" else ["--features"]
    return ["predict", str(files["ckpt"]), str(files[image_key]), str(out), "--float64", "--logits", "--quiet",
            "--devices", "cpu", "--schedule", schedule, *extra]


@pytest.fixture(scope="module")
def whole(files) -> dict[str, Path]:
    """The uninterrupted run of every schedule."""
    stores = {}
    for schedule in SCHEDULES:
        stores[schedule] = files["root"] / f"whole-{schedule}.zarr"
        assert main(argv(files, stores[schedule], schedule)) == 0
    return stores


@pytest.fixture(scope="module")
def partial(files) -> Path:
    """A wavefront run cancelled after 15 subdomains (two whole rows and one more): done rows and an encoded
    row beyond them."""
    out = files["root"] / "partial.zarr"
    cancel = threading.Event()
    steps = segment_iter(np.load(files["img"]), str(files["ckpt"]), subdomain_size=SUB, dtype=torch.float64,
                         schedule="wavefront", output=out, logits=True, features=True, devices="cpu",
                         cancel=cancel)
    for event in steps:
        if event.phase == "write" and event.done == 15:
            cancel.set()
    return out


def copy_of(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / store.name
    shutil.copytree(store, target)
    return target


def resume(files, out: Path, capsys, schedule: str = "wavefront") -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main([*argv(files, out, schedule), "--resume"])
    return code, capsys.readouterr().err.strip().splitlines()


# -- the fingerprint ------------------------------------------------------------------------------------------


def test_resume_refuses_another_image_of_the_same_shape(files, partial, tmp_path, capsys):
    out = copy_of(partial, tmp_path)
    before = digest(out)
    capsys.readouterr()
    assert main([*argv(files, out, image_key="other"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made from another image (pixels y=0..31, x=0..31 differ)" in err[0], err
    assert digest(out) == before


def test_resume_names_the_input_layout_that_differs(files, partial, tmp_path):
    out = copy_of(partial, tmp_path)
    with pytest.raises(DDUNetError, match="made from an input with dtype='float64', this input has 'float32'"):
        segment(image().astype(np.float32), str(files["ckpt"]), subdomain_size=SUB, dtype=torch.float64,
                schedule="wavefront", output=out, logits=True, features=True, resume=True)
    with pytest.raises(DDUNetError, match="made with subdomain_size=\\[16, 24\\], this run has \\[24, 24\\]"):
        segment(image(), str(files["ckpt"]), subdomain_size=(24, 24), dtype=torch.float64, output=out,
                logits=True, features=True, resume=True)


def test_a_stack_whose_last_plane_differs_is_refused(tmp_path):
    """A stack samples its first, middle and last plane: another last plane is named."""
    model = tiny_model()
    stack = np.stack([image(seed=s) for s in range(3)])
    out = tmp_path / "stack.zarr"
    kwargs = {"axes": "ZYX", "subdomain_size": SUB, "dtype": torch.float64, "output": out}
    segment(stack, model, planes=[0], **kwargs)
    segment(stack, model, resume=True, **kwargs)
    other = stack.copy()
    other[2] = image(seed=9)
    with pytest.raises(DDUNetError, match=r"another image \(pixels y=0..31, x=0..31 of sampled plane 3 of 3"):
        segment(other, model, resume=True, **kwargs)


def test_a_lost_chunk_of_one_plane_of_a_stack_is_recomputed(tmp_path):
    model = tiny_model()
    stack = np.stack([image(seed=s) for s in range(2)])
    out = tmp_path / "stack.zarr"
    kwargs = {"axes": "ZYX", "subdomain_size": SUB, "dtype": torch.float64, "output": out}
    whole = np.asarray(segment(stack, model, **kwargs)[...])
    for name in ("labels/0", "_work/bottleneck"):
        (out / name / "c" / "1" / ("0/" if name == "_work/bottleneck" else "") / "2" / "3").unlink()
    events = []
    labels = segment(stack, model, resume=True, progress=events.append, **kwargs)
    assert "resume: 1 subdomains marked done have missing or unreadable chunks (labels/0)" in events[0].message
    assert "1 stored bottlenecks are missing" in events[0].message
    assert [e.plane for e in events if e.phase == "write"] == [(1,)]
    np.testing.assert_array_equal(np.asarray(labels[...]), whole)


def test_fingerprint_samples_blocks_spread_over_the_image():
    blocks = sample_blocks((75, 161))
    assert len(blocks) == 16
    assert [0, 32, 0, 32] in blocks and [43, 75, 129, 161] in blocks
    assert sample_blocks((8, 300))[0] == [0, 8, 0, 32]


def test_a_store_without_fingerprint_still_resumes(files, partial, whole, tmp_path, capsys):
    """Stores written before the fingerprint (and before every chunk was written) resume on what they record."""
    out = copy_of(partial, tmp_path)
    meta = zarr.open_group(str(out), mode="r+")
    attrs = dict(meta.attrs["napari_ddunet"])
    for key in ("input", "grid", "empty_chunks", "bands"):
        attrs.pop(key, None)
    meta.attrs["napari_ddunet"] = attrs
    code, err = resume(files, out, capsys)
    assert code == 0, err
    assert_same_store(out, whole["wavefront"])


# -- kill or cancel, then resume, on every schedule -----------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_cancel_then_resume_on_every_schedule(files, whole, schedule, tmp_path, capsys):
    out = tmp_path / "cancelled.zarr"
    cancel = threading.Event()
    steps = segment_iter(np.load(files["img"]), str(files["ckpt"]), subdomain_size=SUB, dtype=torch.float64,
                         schedule=schedule, output=out, logits=True, features=schedule != "streaming",
                         communicate=False if schedule == "streaming" else None, devices="cpu", cancel=cancel)
    decoded = 0
    for event in steps:
        # the second decode event; monolithic decodes every row before its first write, so it is cancelled
        # after its whole-grid encode (its kills at random points are the subprocess test below)
        decoded += event.phase == "decode"
        if decoded == 2 or (schedule == "monolithic" and event.phase == "encode"):
            cancel.set()
    done = int(np.asarray(open_output(out)["done"][...]).sum())
    assert (schedule == "monolithic" or done > 0) and done < GRID
    code, err = resume(files, out, capsys, schedule)
    assert code == 0, err
    assert_same_store(out, whole[schedule], features=schedule != "streaming")


def test_sigkill_at_a_random_point_then_resume_on_every_schedule(files, whole, tmp_path, capsys):
    """One process per schedule, killed after a seeded random number of written subdomains (run side by side,
    so the four imports overlap), then each store resumed in this process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for schedule in SCHEDULES:
        n = random.Random(f"kill-{schedule}").randrange(1, GRID)
        out = tmp_path / f"killed-{schedule}.zarr"
        runs[schedule] = (n, out, subprocess.Popen(
            [sys.executable, "-c", DRIVER, "kill", str(n), "0", *argv(files, out, schedule)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env))
    for schedule, (n, out, process) in runs.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, (schedule, err)
        assert n <= int(np.asarray(open_output(out)["done"][...]).sum()) < GRID, schedule
    for schedule, (_, out, _) in runs.items():
        code, err = resume(files, out, capsys, schedule)
        assert code == 0, (schedule, err)
        assert_same_store(out, whole[schedule], features=schedule != "streaming")


def test_a_disk_that_fills_stops_with_one_line_and_resumes(files, whole, tmp_path, capsys):
    """RLIMIT_FSIZE below a logits chunk (K x 16 x 24 float64) after 12 subdomains: writes fail with EFBIG."""
    out = tmp_path / "full.zarr"
    process = subprocess.run([sys.executable, "-c", DRIVER, "fill", "12", "2048", *argv(files, out)],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # the run's first message, then the fault's one line
    err = process.stderr.strip().splitlines()[1:]
    assert process.returncode == 3, process.stderr
    assert len(err) == 1 and "File too large" in err[0] and "--resume" in err[0], err
    assert 12 <= int(np.asarray(open_output(out)["done"][...]).sum()) < GRID
    code, err = resume(files, out, capsys)
    assert code == 0, err
    assert_same_store(out, whole["wavefront"])


# -- damaged stores -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARRAYS)
def test_a_lost_chunk_of_a_complete_store_is_recomputed(files, whole, name, tmp_path, capsys):
    out = copy_of(whole["wavefront"], tmp_path)
    chunk(out, name, 1, 2).unlink()
    code, err = resume(files, out, capsys)
    assert code == 0, err
    if name == "_work/bottleneck":
        assert "1 stored bottlenecks are missing or unreadable; re-encoding them" in err[0]
    else:
        assert f"1 subdomains marked done have missing or unreadable chunks ({name}); recomputing them" in err[0]
    assert_same_store(out, whole["wavefront"])


@pytest.mark.parametrize("name", ["labels/0", "_work/bottleneck", "_work/done"])
def test_a_truncated_chunk_is_recomputed(files, whole, partial, name, tmp_path, capsys):
    """Rows 0-1 are done; row 2's stored bottleneck is read by the windows of rows 3 and 4."""
    out = copy_of(partial, tmp_path)
    path = chunk(out, name, 2 if name == "_work/bottleneck" else 1, 3)
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    code, err = resume(files, out, capsys)
    assert code == 0, err
    assert_same_store(out, whole["wavefront"])


def test_a_lost_bottleneck_of_a_neighbour_is_re_encoded(files, whole, partial, tmp_path, capsys):
    """Without the check, resume read the missing chunk as zeros into the communication of rows 3 and 4."""
    out = copy_of(partial, tmp_path)
    assert np.asarray(open_output(out)["done"][...])[:2].all()
    for c in range(7):
        chunk(out, "_work/bottleneck", 2, c).unlink(missing_ok=True)
        chunk(out, "_work/bottleneck", 1, c).unlink()
    code, err = resume(files, out, capsys)
    assert code == 0, err
    assert_same_store(out, whole["wavefront"])


@pytest.mark.parametrize("where", ["zarr.json", "labels/0/zarr.json", "_work/done/zarr.json"])
def test_corrupt_metadata_is_one_line_and_touches_nothing(files, whole, where, tmp_path, capsys):
    out = copy_of(whole["wavefront"], tmp_path)
    text = (out / where).read_text()
    (out / where).write_text(text[: len(text) // 2])
    before = digest(out)
    code, err = resume(files, out, capsys)
    assert code == 2
    assert len(err) == 1 and "cannot resume" in err[0], err
    assert digest(out) == before


def test_chunks_of_zeros_are_written_so_a_complete_store_resumes_as_complete(tmp_path):
    """A model that answers class 0 everywhere: every label chunk is zeros, and still on disk."""
    model = tiny_model()
    with torch.no_grad():
        model.decoder.outc.bias.copy_(torch.tensor([1e6, 0.0, 0.0], dtype=torch.float64))
    out = tmp_path / "zeros.zarr"
    kwargs = {"subdomain_size": SUB, "dtype": torch.float64, "output": out, "schedule": "wavefront"}
    segment(image(), model, **kwargs)
    assert len(list((out / "labels" / "0" / "c").rglob("*"))) == 5 + GRID   # 5 row folders, a chunk each
    events = []
    segment(image(), model, resume=True, progress=events.append, **kwargs)
    assert "recomputing" not in events[0].message
    assert not [e for e in events if e.phase == "write"]


def test_a_store_without_its_record_of_written_chunks_is_not_second_guessed(files, whole, tmp_path, capsys):
    """Old stores skipped chunks of zeros: without ``empty_chunks`` a missing chunk is not taken as lost."""
    out = copy_of(whole["wavefront"], tmp_path)
    root = zarr.open_group(str(out), mode="r+")
    attrs = dict(root.attrs["napari_ddunet"])
    del attrs["empty_chunks"]
    root.attrs["napari_ddunet"] = attrs
    chunk(out, "logits", 0, 0).unlink()
    code, err = resume(files, out, capsys)
    assert code == 0 and "recomputing" not in " ".join(err)
    assert not chunk(out, "logits", 0, 0).exists()
    assert json.loads((out / "zarr.json").read_text())["attributes"]["napari_ddunet"]["complete"] is True
