"""Stacks: a 2D model on Z, T, TZ and TCZYX data, plane by plane (issue 11 item 3).

Every plane of a stack must be exactly the 2D engine's result on that plane (float64, bit for bit), the
store must carry the stack's leading axes with their OME-Zarr names, types and spacing, and a stopped
run must resume at the plane and subdomain where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_ddunet import load_checkpoint, save_checkpoint, segment
from napari_ddunet.cli import main
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.engine import segment_iter
from napari_ddunet.core.inference.sink import open_output
from napari_ddunet.core.inference.stack import PlaneView, layer_axes, open_stack, parse_axes

SUB = (16, 16)
F64 = {"subdomain_size": SUB, "dtype": torch.float64}


def _planes(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A stack of natural images (skimage's camera, moon, coins, ... crops), one per plane, in [0, 1]."""
    from skimage import data

    pictures = [data.camera(), data.moon(), data.coins(), data.page(), data.text()]
    *lead, height, width = shape
    planes = []
    for i in range(int(np.prod(lead))):
        picture = pictures[(i + seed) % len(pictures)]
        y, x = 7 * i % (picture.shape[0] - height), 11 * i % (picture.shape[1] - width)
        planes.append(picture[y:y + height, x:x + width] / 255.0)
    return np.stack(planes).reshape(shape)


def _plane_by_plane(model, stack: np.ndarray, lead: int, **kwargs) -> np.ndarray:
    """The reference: the 2D engine on each plane alone."""
    out = None
    for index in np.ndindex(*stack.shape[:lead]):
        labels = segment(stack[index], model, **kwargs)
        out = np.zeros(stack.shape[:lead] + labels.shape, labels.dtype) if out is None else out
        out[index] = labels
    return out


def _ome_zarr(path, data: np.ndarray, axes: list[tuple[str, str]], scale: list[float]) -> None:
    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=data, chunks=(1,) * (data.ndim - 2) + (32, 32))
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": t} for n, t in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]}


@pytest.mark.parametrize("schedule", ["monolithic", "wavefront", "recompute"])
def test_z_stack_is_the_2d_engine_on_every_plane(make_model, schedule):
    model = make_model()
    stack = _planes((3, 40, 48))
    result = segment(stack, model, axes="ZYX", schedule=schedule, probabilities=True, return_result=True, **F64)
    assert result.labels.shape == (3, 40, 48) and result.probabilities.shape == (3, 3, 40, 48)
    for z in range(3):
        plane = segment(stack[z], model, schedule=schedule, probabilities=True, return_result=True, **F64)
        assert np.array_equal(result.labels[z], plane.labels)
        assert np.array_equal(result.probabilities[z], plane.probabilities)
    assert len(np.unique(result.labels)) > 1


def test_ome_zarr_z_stack_through_the_cli(make_model, tmp_path):
    """The defect: a ZYX OME-Zarr was refused with a --channel-axis hint. Now: labels (Z, Y, X) chunked one
    plane by one subdomain, axes named with their types and the z spacing kept."""
    model = make_model()
    stack = _planes((4, 40, 48))
    _ome_zarr(tmp_path / "in.ome.zarr", stack, [("z", "space"), ("y", "space"), ("x", "space")], [2.5, 1.0, 1.0])
    ckpt = save_checkpoint(tmp_path / "m.pt", model, subdomain_size=SUB)
    out = tmp_path / "out.zarr"
    assert main(["predict", str(ckpt), str(tmp_path / "in.ome.zarr"), str(out), "--float64", "--quiet"]) == 0
    store = open_output(out)
    labels = np.asarray(store["labels"])
    assert labels.shape == (4, 40, 48) and store["labels"].chunks == (1, 16, 16)
    assert np.array_equal(labels, _plane_by_plane(model, stack, 1, **F64))
    entry = dict(zarr.open_group(str(out / "labels")).attrs)["ome"]["multiscales"][0]
    assert [(a["name"], a["type"]) for a in entry["axes"]] == [("z", "space"), ("y", "space"), ("x", "space")]
    for dataset in entry["datasets"]:
        scale = next(t["scale"] for t in dataset["coordinateTransformations"] if t["type"] == "scale")
        assert scale[0] == 2.5 and len(scale) == 3
    assert store["attrs"]["complete"] and store["attrs"]["stack"] == {"axes": ["z"], "shape": [4]}
    assert np.asarray(store["done"]).shape == (4, 3, 3)


def test_tczyx_stack_with_channels(make_model, tmp_path):
    """TCZYX into a 2-band model: labels (T, Z, Y, X), t typed "time", each (t, z) plane's CYX bands fed."""
    model = make_model(in_channels=2)
    stack = _planes((2, 2, 3, 32, 32))
    out = tmp_path / "out.zarr"
    result = segment(stack, model, axes="TCZYX", output=str(out), return_result=True, **F64)
    assert result.labels.shape == (2, 3, 32, 32)
    for t in range(2):
        for z in range(3):
            assert np.array_equal(np.asarray(result.labels[t, z]), segment(stack[t, :, z], model, **F64))
    entry = dict(zarr.open_group(str(out / "labels")).attrs)["ome"]["multiscales"][0]
    assert [(a["name"], a["type"]) for a in entry["axes"]] == [
        ("t", "time"), ("z", "space"), ("y", "space"), ("x", "space")]
    assert zarr.open_array(str(out / "labels" / "0")).metadata.dimension_names == ("t", "z", "y", "x")


def test_imagej_tiff_z_stack(make_model, tmp_path, realdata_zstack):
    """The real confocal stack saved as an ImageJ hyperstack, which names its axes (ZYX) and z spacing:
    segmented plane by plane without being told, the labels keep the spacing and unit."""
    model = make_model()
    stack = np.asarray(tifffile.imread(realdata_zstack)[20:23, 96:136, 96:136])
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, resolution=(1 / 0.26, 1 / 0.26),
                     metadata={"axes": "ZYX", "spacing": 0.29, "unit": "um"})
    out = tmp_path / "out.zarr"
    labels = segment(str(tmp_path / "z.tif"), model, output=str(out), **F64)
    assert np.array_equal(np.asarray(labels), _plane_by_plane(model, stack, 1, **F64))
    entry = dict(zarr.open_group(str(out / "labels")).attrs)["ome"]["multiscales"][0]
    assert entry["axes"][0] == {"name": "z", "type": "space", "unit": "micrometer"}
    assert entry["datasets"][0]["coordinateTransformations"][0]["scale"][0] == 0.29


def test_real_z_stack_without_axis_names_through_the_cli(make_model, tmp_path, realdata_zstack, capsys):
    """nuclei.tif names no axes (tifffile reads QYX): without --axes one line that says --axes ZYX and no
    output; with --axes ZYX --planes, those planes are the 2D engine's and the others stay 0."""
    ckpt = save_checkpoint(tmp_path / "m.pt", make_model(), subdomain_size=(64, 64))
    out = tmp_path / "out.zarr"
    base = ["predict", str(ckpt), str(realdata_zstack), str(out), "--float64", "--quiet"]
    assert main(base) == 2
    error = capsys.readouterr().err.strip()
    assert "--axes ZYX" in error and "\n" not in error and not out.exists()
    assert main([*base, "--axes", "ZYX", "--planes", "10", "41"]) == 0
    store = open_output(out)
    labels, done = store["labels"], np.asarray(store["done"], dtype=bool)
    assert labels.shape == (60, 256, 256) and labels.chunks == (1, 64, 64)
    assert done[[10, 41]].all() and done.sum() == 2 * 16 and not store["attrs"]["complete"]
    stack, model = tifffile.imread(realdata_zstack), load_checkpoint(ckpt)
    for z in (10, 41):
        assert np.array_equal(np.asarray(labels[z]), segment(stack[z], model, subdomain_size=(64, 64),
                                                             dtype=torch.float64))
    assert not np.asarray(labels[11]).any()


def test_time_series_resumes_at_the_plane_and_subdomain_where_it_stopped(make_model, tmp_path):
    """TZYX, cancelled in the middle of its third plane, then resumed: equal to an uninterrupted run, no
    plane or subdomain computed twice, and done/total one monotonic count over all planes."""
    model = make_model()
    stack = _planes((2, 2, 64, 48))   # 4 x 3 subdomains per plane
    full = segment(stack, model, axes="TZYX", schedule="wavefront", **F64)
    out = tmp_path / "out.zarr"
    cancel = threading.Event()
    seen = []

    def stop_in_third_plane(event):
        seen.append(event)
        if event.phase == "write" and event.plane == (1, 0) and event.done == 2 * 12 + 1:
            cancel.set()

    first = segment(stack, model, axes="TZYX", schedule="wavefront", output=str(out), cancel=cancel,
                    progress=stop_in_third_plane, return_result=True, **F64)
    assert first.cancelled
    done = np.asarray(open_output(out)["done"], dtype=bool)
    assert done[0, 0].all() and done[0, 1].all() and not done[1, 1].any() and 0 < done[1, 0].sum() < 12
    assert [e.done for e in seen] == sorted(e.done for e in seen) and {e.total for e in seen} == {48}
    stopped = int(done.sum())
    events = []
    resumed = segment(stack, model, axes="TZYX", schedule="wavefront", output=str(out), resume=True,
                      progress=events.append, return_result=True, **F64)
    assert not resumed.cancelled and events[0].done == stopped and events[-1].done == 48
    writes = [e for e in events if e.phase == "write"]
    assert len(writes) == 48 - stopped and {e.plane for e in writes} == {(1, 0), (1, 1)}
    assert np.array_equal(np.asarray(resumed.labels), full)
    assert open_output(out)["attrs"]["complete"]


def test_sigkill_in_a_plane_then_resume_equals_uninterrupted(make_model, tmp_path):
    """A TZYX predict killed (SIGKILL) in its second plane resumes there, bit for bit."""
    ckpt = save_checkpoint(tmp_path / "m.pt", make_model(), subdomain_size=SUB)
    np.save(tmp_path / "movie.npy", _planes((2, 2, 64, 96)))   # 4 x 6 subdomains per plane
    args = [str(ckpt), str(tmp_path / "movie.npy"), "--axes", "TZYX", "--float64", "--logits", "--schedule",
            "recompute", "--quiet", "--devices", "cpu"]
    out = tmp_path / "killed.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "napari_ddunet.cli", "predict", args[0], args[1], str(out),
                                *args[2:]], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        # one chunk file per finished subdomain: counting files is a cheap look at the progress record
        done = sum(not n.endswith(".partial") for _, _, names in os.walk(out / "_work" / "done" / "c") for n in names)
        if done >= 30:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = np.asarray(open_output(out)["done"], dtype=bool)
    assert done[0, 0].all() and 30 <= done.sum() < 4 * 24
    assert main(["predict", args[0], args[1], str(out), *args[2:], "--resume"]) == 0
    whole = tmp_path / "whole.zarr"
    assert main(["predict", args[0], args[1], str(whole), *args[2:]]) == 0
    resumed, reference = open_output(out), open_output(whole)
    assert resumed["attrs"]["complete"] is True
    for name in ("labels", "logits"):
        assert np.array_equal(np.asarray(resumed[name]), np.asarray(reference[name])), name


class _Recorded:
    """An array that records which plane (its first index) every read is of."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        self.reads.append(int(key[0]))
        return self.data[key]


def test_one_plane_in_flight_at_a_time(make_model):
    """Memory is one plane's: every read of a plane comes after the last read of the plane before."""
    stack = _Recorded((_planes((3, 64, 64)) * 1000).astype(np.uint16))
    segment(stack, make_model(), axes="ZYX", schedule="wavefront", **F64)
    assert stack.reads == sorted(stack.reads) and set(stack.reads) == {0, 1, 2}


def test_planes_choose_what_runs(make_model):
    """``planes`` computes only those planes (the widget's "current plane"); the others stay 0."""
    model = make_model()
    stack = _planes((4, 32, 32))
    events = []
    labels = segment(stack, model, axes="ZYX", planes=[2], progress=events.append, **F64)
    assert labels.shape == (4, 32, 32) and events[-1].total == 4
    assert np.array_equal(labels[2], segment(stack[2], model, **F64))
    assert not labels[[0, 1, 3]].any()


def test_two_d_images_keep_their_store_layout(make_model, tmp_path):
    """Unit t/z axes are no stack: the store is the 2D one it always was (old stores resume)."""
    model = make_model()
    image = _planes((1, 1, 32, 48))
    _ome_zarr(tmp_path / "in.ome.zarr", image, [("t", "time"), ("z", "space"), ("y", "space"), ("x", "space")],
              [1.0, 1.0, 1.0, 1.0])
    out = tmp_path / "out.zarr"
    segment(str(tmp_path / "in.ome.zarr"), model, output=str(out), **F64)
    store = open_output(out)
    assert store["labels"].shape == (32, 48) and "stack" not in store["attrs"]
    assert zarr.open_array(str(out / "_work" / "done")).metadata.dimension_names == ("row", "col")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"axes": "ZYXQ"}, "axes='ZYXQ' does not describe"),
    ({"axes": "ZXY"}, "Y before X"),
    ({"axes": "ZYX", "planes": [5]}, "plane 5 is not in the stack"),
    ({"axes": "ZYX", "channel_axis": 0}, "whose entries are planes"),
    ({}, "--axes ZYX"),
])
def test_bad_stack_requests_are_one_line_before_any_output(make_model, tmp_path, kwargs, needle):
    out = tmp_path / "out.zarr"
    with pytest.raises(DDUNetError) as caught:
        next(segment_iter(_planes((3, 32, 32)), make_model(), output=str(out), **F64, **kwargs))
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists()


def test_four_d_without_axes_says_how_to_name_them(make_model):
    with pytest.raises(DDUNetError, match=r"dimensionality.*--axes TZYX or ZCYX"):
        next(segment_iter(_planes((2, 3, 32, 32)), make_model(), **F64))


def test_ambiguous_three_d_without_axes_keeps_the_channel_rule(make_model):
    """(3, H, W) into a 3-band model is still CYX, not a stack."""
    model = make_model(in_channels=3)
    image = _planes((3, 32, 32))
    assert segment(image, model, **F64).shape == (32, 32)


def test_plane_view_reads_and_writes_one_plane_lazily(tmp_path):
    base = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(2, 3, 4, 5), chunks=(1, 1, 4, 5), dtype="u1")
    view = PlaneView(base, {0: 1, 2: 3})
    assert view.shape == (3, 5) and view.chunks == (1, 5)
    view[1:, 2:4] = 7
    assert np.asarray(base[1, 1:, 3, 2:4]).tolist() == [[7, 7], [7, 7]] and int(np.asarray(base).sum()) == 28
    assert np.asarray(view[...]).shape == (3, 5) and np.asarray(view).sum() == 28


def test_axes_parse_and_file_axes():
    assert parse_axes("tczyx", (1, 2, 3, 4, 5)) == ["t", "c", "z", "y", "x"]
    _, stack = open_stack(np.zeros((3, 2, 8, 8)), "ZCYX")
    assert stack.names == ("z",) and stack.shape == (3,) and stack.channel_axis(1) == 0
    assert open_stack(np.zeros((8, 8)))[1] is None


def test_layer_axes_name_a_napari_layers_planes():
    """Sliders are planes: Z for one, T and Z for two, the layer's own t/z labels where it has them."""
    assert layer_axes((5, 64, 64), None) == "ZYX"
    assert layer_axes((2, 5, 64, 64), None) == "TZYX"
    assert layer_axes((2, 3, 5, 64, 64), 1) == "TCZYX"
    assert layer_axes((5, 64, 64), None, ("t", "y", "x")) == "TYX"
    assert layer_axes((64, 64), None) is None and layer_axes((1, 64, 64, 3), 3) is None
    with pytest.raises(DDUNetError, match="at most two"):
        layer_axes((2, 2, 2, 64, 64), None)


def test_planes_of_a_two_d_image_are_refused(make_model):
    with pytest.raises(DDUNetError, match="planes= chooses planes of a stack"):
        next(segment_iter(_planes((1, 32, 32))[0], make_model(), planes=[0], **F64))
