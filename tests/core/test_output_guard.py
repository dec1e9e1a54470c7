"""No output destroys data it does not own: outputs vs what the run reads, by file identity; the
output's exclusive lock, taken by real processes; overwrite deletes only under the lock, after validation."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_ddunet import save_checkpoint, segment
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.output_guard import (
    OutputInUse,
    OutputLock,
    check_output,
    claim_output,
    lock_file,
    read_locations,
)
from napari_ddunet.core.inference.request import build_request
from napari_ddunet.core.inference.sink import OutputError, open_output
from store_digest import digest

SUB = (16, 16)



@pytest.fixture
def model(make_model):
    return make_model()


@pytest.fixture
def ome_input(tmp_path) -> Path:
    """An OME-Zarr image ``img.ome.zarr`` (level "0") with the user's annotations in ``labels`` beside it."""
    root = tmp_path / "data" / "img.ome.zarr"
    group = zarr.open_group(str(root), mode="w")
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}]}]}
    group.create_array("0", shape=(32, 48), chunks=(16, 16), dtype="f8")[...] = \
        np.random.default_rng(0).normal(size=(32, 48))
    labels = group.create_group("labels")
    labels.create_array("annotations", shape=(32, 48), chunks=(16, 16), dtype="u1")[...] = 7
    return root


def run(image, model, output, **kwargs):
    return segment(image, model, subdomain_size=SUB, output=output, devices=["cpu"], **kwargs)


def test_output_inside_or_around_the_input_is_refused_in_every_spelling(ome_input, model, tmp_path):
    before = digest(ome_input.parent)
    link = tmp_path / "link.zarr"
    link.symlink_to(ome_input)
    cases = {
        "level 0 of the input": (ome_input / "0", "lies inside"),
        "the annotations beside it": (ome_input / "labels", "lies inside"),
        "a new sibling in the same store": (ome_input / "new.zarr", "lies inside"),
        "a symlink to the input": (link, "symbolic link"),
        "x/../x": (ome_input / ".." / ome_input.name, "is \\(or contains\\) the input"),
        "a parent of the input": (ome_input.parent, "is \\(or contains\\) the input"),
    }
    for name, (output, match) in cases.items():
        with pytest.raises(OutputError, match=match):
            run(str(ome_input), model, output, overwrite=True)
        assert digest(ome_input.parent) == before, name
    # the input through a symlink, the output through a symlinked parent folder
    alias = tmp_path / "alias"
    alias.symlink_to(ome_input.parent)
    for image, output in ((str(link), ome_input / "labels"), (str(ome_input), alias / ome_input.name / "labels")):
        with pytest.raises(OutputError, match="lies inside"):
            run(image, model, output, overwrite=True)
    # the same when the input is an array object, not a path: its store is found from the array itself
    level0 = zarr.open_group(str(ome_input), mode="r")["0"]
    for image in (level0, da.from_zarr(level0)):
        with pytest.raises(OutputError, match="lies inside"):
            run(image, model, ome_input / "labels", overwrite=True)
        with pytest.raises(OutputError, match="is \\(or contains\\) the input"):
            run(image, model, ome_input.parent, overwrite=True)
    assert digest(ome_input.parent) == before


def test_read_locations_name_the_files_and_stores_an_input_lives_in(ome_input, tmp_path):
    level0 = zarr.open_group(str(ome_input), mode="r")["0"]
    store = str(ome_input.resolve())
    assert store in {str(p.resolve()) for p in read_locations(level0)}
    assert store in {str(p.resolve()) for p in read_locations(da.from_zarr(level0)[2:10])}
    np.save(tmp_path / "img.npy", np.zeros((32, 48)))
    mapped = np.load(tmp_path / "img.npy", mmap_mode="r")
    assert str((tmp_path / "img.npy").resolve()) in {str(p.resolve()) for p in read_locations(np.asarray(mapped)[1:])}
    assert read_locations(np.zeros((4, 4))) == ()


def test_input_that_is_the_old_outputs_labels_is_refused_before_anything_is_deleted(model, tmp_path):
    out = tmp_path / "out.zarr"
    run(np.random.default_rng(1).normal(size=(32, 48)), model, out)
    before = digest(out)
    labels = zarr.open_array(str(out / "labels" / "0"), mode="r")
    for image in (str(out / "labels" / "0"), labels, da.from_zarr(labels)):   # a napari layer of it is a dask array
        with pytest.raises(OutputError, match="is \\(or contains\\) the input"):
            run(image, model, out, overwrite=True)
    assert digest(out) == before


def test_overwrite_deletes_nothing_when_the_schedule_is_refused(model, tmp_path):
    """The old store goes only once the whole request (the schedule for its budget included) is accepted."""
    img = np.random.default_rng(1).normal(size=(32, 48))
    out = tmp_path / "out.zarr"
    run(img, model, out)
    before = digest(out)
    with pytest.raises(DDUNetError, match="budget"):
        run(img, model, out, overwrite=True, memory_budget=1)
    assert digest(out) == before


def test_overwrite_replaces_only_a_napari_ddunet_store_holding_only_its_own_entries(model, tmp_path):
    img = np.random.default_rng(2).normal(size=(32, 48))
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("0", shape=(4, 4), dtype="u1")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    ours = tmp_path / "ours.zarr"
    run(img, model, ours)
    (ours / "notes.txt").write_text("mine, not napari-ddunet's")
    cases = [(foreign, "did not write"), (folder, "not a zarr store"), (ours, "'notes.txt'")]
    for output, match in cases:
        before = digest(output)
        with pytest.raises(OutputError, match=match):
            run(img, model, output, overwrite=True)
        assert digest(output) == before
    (ours / "notes.txt").unlink()
    run(img, model, ours, overwrite=True)
    assert open_output(ours)["attrs"]["complete"] is True


def test_dangling_symlink_file_and_missing_folder_each_give_one_line(model, tmp_path):
    img = np.zeros((32, 48))
    dangling = tmp_path / "gone.zarr"
    dangling.symlink_to(tmp_path / "nowhere.zarr")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for output, match in [(dangling, "dangling symbolic link"), (afile, "is a file, not a zarr store"),
                          (tmp_path / "no" / "out.zarr", "does not exist")]:
        for flags in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(OutputError, match=match) as caught:
                run(img, model, output, **flags)
            assert "\n" not in str(caught.value)
    assert afile.read_text() == "x" and dangling.is_symlink() and not (tmp_path / "nowhere.zarr").exists()


def test_the_sink_never_removes_an_existing_path(model, tmp_path):
    """A store that appeared after validation is not replaced: the lock holder re-checks, and zarr is told to fail."""
    img = np.random.default_rng(3).normal(size=(32, 48))
    out = tmp_path / "out.zarr"
    late = build_request(img, model, subdomain_size=SUB, devices=["cpu"], output=out, memory_budget=None,
                         features=False, probabilities=False, logits=False, channel_axis=None, region=None,
                         communicate=None, resume=False, overwrite=False, dtype=torch.float64, schedule=None,
                         distributed=None)
    run(img, model, out)        # another run creates the store between the late run's checks and its start
    before = digest(out)
    with pytest.raises(OutputError, match="exists"), claim_output(late):
        pass
    assert digest(out) == before and not lock_file(out).exists()


def _hold(path: str, ready, release) -> None:
    lock = OutputLock.acquire(Path(path))
    ready.set()
    release.wait(120)
    lock.release()


@pytest.fixture
def holder():
    """``holder(path)``: another process that holds the output lock of ``path`` until killed."""
    context = multiprocessing.get_context("fork")   # the child only takes a lock: no torch, no threads used
    processes = []

    def start(path: Path):
        ready, release = context.Event(), context.Event()
        process = context.Process(target=_hold, args=(str(path), ready, release), daemon=True)
        process.start()
        assert ready.wait(60), "the holder did not take the lock"
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        process.join(10)


def test_a_locked_output_is_refused_and_untouched_until_its_holder_dies(model, tmp_path, holder):
    img = np.random.default_rng(4).normal(size=(32, 48))
    out = tmp_path / "out.zarr"
    run(img, model, out)
    before = digest(out)
    process = holder(out)
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(OutputInUse, match=f"in use by another napari-ddunet run \\(pid {process.pid} on "):
            run(img, model, out, **flags)
        assert digest(out) == before
    fresh = tmp_path / "fresh.zarr"
    holder(fresh)
    with pytest.raises(OutputInUse):
        run(img, model, fresh)
    assert not fresh.exists()
    # SIGKILL: the kernel releases the lock; the stale lock file does not block the next run
    process.kill()
    process.join(10)
    assert lock_file(out).exists()
    run(img, model, out, overwrite=True)
    assert open_output(out)["attrs"]["complete"] is True
    assert not lock_file(out).exists()


def wait_until_stopped(pid: int, timeout_s: float = 30.0) -> None:
    """Until the kernel reports every thread of ``pid`` stopped (state T in /proc)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for tid in os.listdir(f"/proc/{pid}/task")]
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop within {timeout_s} s")


def test_two_predict_processes_on_one_output(tmp_path, make_model, capsys):
    """A running predict (a subprocess) holds the lock: a second one (this process, any flags) gets one line,
    exit 2, and the first finishes its store intact (SIGSTOP keeps the first one mid-run meanwhile)."""
    from napari_ddunet.cli import main

    model = make_model()
    ckpt = save_checkpoint(tmp_path / "m.pt", model, subdomain_size=SUB)
    img = np.random.default_rng(5).normal(size=(6 * 16, 6 * 16))
    np.save(tmp_path / "img.npy", img)
    out = tmp_path / "out.zarr"
    argv = ["predict", str(ckpt), str(tmp_path / "img.npy"), str(out), "--quiet", "--devices", "cpu", "--float64"]
    first = subprocess.Popen([sys.executable, "-m", "napari_ddunet.cli", *argv],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    try:
        while first.poll() is None and not (out / "zarr.json").exists():
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before the second could start"
        wait_until_stopped(first.pid)  # kill() returns before every thread of the process has stopped writing
        seen = digest(out)
        capsys.readouterr()
        for flags in ([], ["--overwrite"], ["--resume"]):
            assert main([*argv, *flags]) == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and f"in use by another napari-ddunet run (pid {first.pid} " in lines[0], lines
        assert digest(out) == seen
    finally:
        first.send_signal(signal.SIGCONT)
        first.wait(120)
        first.stderr.close()
    assert first.returncode == 0
    stored = open_output(out)
    assert stored["attrs"]["complete"] is True
    np.testing.assert_array_equal(stored["labels"][...], segment(img, model, subdomain_size=SUB))


TORCHRUN_WORKER = textwrap.dedent(
    """
    import sys

    from napari_ddunet.cli import main

    sys.exit(main(["predict", sys.argv[1] + "/m.pt", sys.argv[1] + "/img.npy", sys.argv[1] + "/out.zarr",
                   "--quiet", "--devices", "cpu", "--subdomain-size", "16", "16"]))
    """
)


def test_torchrun_ranks_all_refuse_a_locked_output_without_waiting(tmp_path, make_model):
    """Rank 0 takes the lock for all ranks; when another process holds it every rank stops with one line."""
    save_checkpoint(tmp_path / "m.pt", make_model(), subdomain_size=SUB)
    np.save(tmp_path / "img.npy", np.random.default_rng(6).normal(size=(64, 48)))
    (tmp_path / "worker.py").write_text(TORCHRUN_WORKER)
    lock = OutputLock.acquire(tmp_path / "out.zarr")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             str(tmp_path / "worker.py"), str(tmp_path)],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
        )
    finally:
        lock.release()
    assert proc.returncode != 0
    assert proc.stderr.count("napari-ddunet predict: error: ") == 2, proc.stderr[-3000:]
    assert proc.stderr.count("in use by another napari-ddunet run") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("rank 0 could not claim the output") == 1, proc.stderr[-3000:]
    assert not (tmp_path / "out.zarr").exists()


def test_check_output_touches_nothing(tmp_path):
    out = tmp_path / "new.zarr"
    assert check_output(out, overwrite=False, resume=False) == out
    assert sorted(tmp_path.iterdir()) == []
