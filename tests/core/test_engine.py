"""The engine equals the monolithic DDU-Net forward (float64, 1e-10) on a 5x7 grid of 16x24 subdomains."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from engine_cases import SHAPE, SUB, image, reference, tiny_model

from napari_ddunet import DDUNet, ModelConfig
from napari_ddunet.core.checkpoints.format import CheckpointInfo, Normalization
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.engine import ProgressEvent, segment, segment_iter
from napari_ddunet.core.inference.grid import pad_to_grid, plan_grid
from napari_ddunet.core.inference.schedule import RUNTIME
from napari_ddunet.core.inference.sink import open_output
from napari_ddunet.core.io.ome import downsample_mode


def run(img, model, **kwargs):
    kwargs.setdefault("subdomain_size", SUB)
    return segment(img, model, dtype=torch.float64, logits=True, return_result=True, **kwargs)


def assert_exact(result, ref, features: bool = True) -> None:
    np.testing.assert_allclose(np.asarray(result.logits[...]), ref["logits"], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(result.labels[...]), ref["logits"].argmax(0))
    if features:
        np.testing.assert_allclose(np.asarray(result.bottleneck[...]), ref["bottleneck"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.asarray(result.communicated[...]), ref["communicated"], rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def model() -> DDUNet:
    return tiny_model()


@pytest.fixture(scope="module")
def ref(model) -> dict[str, np.ndarray]:
    return reference(model, image())


@pytest.mark.parametrize("schedule", ["monolithic", "wavefront", "recompute"])
@pytest.mark.parametrize("devices", [("cpu",), ("cpu", "cpu")])
def test_every_schedule_equals_monolithic_forward(model, ref, schedule, devices):
    result = run(image(), model, schedule=schedule, devices=devices, features=True)
    assert result.schedule == schedule
    assert result.grid == (5, 7)
    assert_exact(result, ref)


@pytest.mark.parametrize("kind", ["dask", "zarr"])
@pytest.mark.parametrize("schedule", ["monolithic", "wavefront", "recompute"])
def test_dask_and_zarr_inputs(model, ref, kind, schedule, tmp_path):
    img = image()
    if kind == "dask":
        source = da.from_array(img, chunks=(20, 50))
    else:
        source = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, chunks=(32, 32), dtype="f8")
        source[...] = img
    devices = ("cpu",) if schedule == "monolithic" else ("cpu", "cpu")
    result = run(source, model, schedule=schedule, devices=devices, features=True)
    assert_exact(result, ref)


@pytest.mark.parametrize("schedule", ["monolithic", "wavefront", "recompute"])
def test_zarr_output_equals_in_memory(model, ref, schedule, tmp_path):
    out = tmp_path / "out.zarr"
    result = run(image(), model, schedule=schedule, output=out, features=True, probabilities=True)
    assert result.output == str(out)
    assert_exact(result, ref)
    stored = open_output(out)
    probs = torch.softmax(torch.from_numpy(ref["logits"]), 0).numpy()
    np.testing.assert_allclose(stored["probabilities"][...].astype(np.float64), probs, atol=1e-3)
    assert stored["probabilities"].dtype == np.float16
    assert stored["attrs"]["complete"] is True
    assert stored["attrs"]["schedule"] == schedule
    assert np.asarray(stored["done"][...]).all()
    # pyramid: level 1 is the 2x2 mode of level 0, ties going to the top-left pixel
    # pyramid level 1: the 2x2 mode of the padded level 0, cropped (OME-Zarr scale 2)
    assert np.asarray(stored["labels/1"][...]).shape == (38, 81)
    np.testing.assert_array_equal(stored["labels/1"][...], downsample_mode(ref["padded_labels"])[:38, :81])
    assert stored["attrs"]["pad_mode"] == "reflect"


def test_streaming_without_communication(model, tmp_path):
    img = image()
    ref = reference(model, img, communicate=False)
    result = run(img, model, communicate=False, devices=("cpu", "cpu"), features=True)
    assert result.schedule == "streaming"
    assert_exact(result, ref)
    no_f = tiny_model(comm_features=0)
    result = run(img, no_f, devices=("cpu", "cpu"))
    assert result.schedule == "streaming"
    assert result.bottleneck is None
    assert_exact(result, reference(no_f, img), features=False)


def test_budget_picks_schedule(model):
    small = run(image(), model, memory_budget="1GB")
    assert small.schedule == "monolithic"
    # budgets above what the run's threads cost whatever the image (schedule.RUNTIME)
    assert run(image(), model, memory_budget=RUNTIME + 500_000).schedule == "wavefront"
    tight = run(image(), model, memory_budget=RUNTIME + 200_000, features=True)
    assert tight.schedule == "recompute"
    assert_exact(tight, reference(model, image()))


def test_normalisation_from_checkpoint_is_global(tmp_path):
    net = tiny_model(seed=3, in_channels=3)
    net.info = CheckpointInfo(config=net.config, class_names=("a", "b", "c"), class_colors=((0, 0, 0, 0),) * 3,
                              normalization=Normalization((0.5, -1.0, 2.0), (2.0, 0.5, 3.0)), subdomain_size=SUB)
    rgba = image(channels=4)
    ref = reference(net, rgba, mean=(0.5, -1.0, 2.0), std=(2.0, 0.5, 3.0))
    result = run(rgba, net, schedule="wavefront", features=True, channels=(0, 1, 2))   # 4 bands, 3 chosen
    assert_exact(result, ref)
    cyx = np.ascontiguousarray(np.moveaxis(rgba[..., :3], -1, 0))
    assert_exact(run(cyx, net, schedule="recompute", features=True), ref)


def test_region_computes_only_intersecting_subdomains(model):
    img = image()
    result = run(img, model, region=(20, 40, 30, 60))
    labels = np.asarray(result.labels)
    # rows 1..2 and columns 1..2 of the grid are computed, as their own little mosaic
    sub = img[16:48, 24:72]
    ref = reference(model, sub)
    np.testing.assert_allclose(result.logits[:, 16:48, 24:72], ref["logits"], atol=1e-10)
    assert not result.logits[:, :16].any() and not result.logits[:, 48:].any()
    assert labels.shape == SHAPE


def test_progress_events_and_cancel(model, tmp_path):
    events: list[ProgressEvent] = []
    cancel = threading.Event()

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.phase == "write" and event.done >= 7:
            cancel.set()

    out = tmp_path / "partial.zarr"
    result = segment(image(), model, subdomain_size=SUB, dtype=torch.float64, schedule="wavefront",
                     output=out, progress=progress, cancel=cancel, return_result=True)
    assert events[0].phase == "prepare" and set(events[0].outputs) == {"labels"}
    assert events[-1].phase == "cancelled" and result.cancelled
    assert {"encode", "communicate", "decode", "write"} <= {e.phase for e in events}
    writes = [e for e in events if e.phase == "write"]
    assert all(e.region is not None for e in writes)
    stored = open_output(out)
    done = np.asarray(stored["done"][...]).astype(bool)
    assert 7 <= done.sum() < 35
    assert stored["attrs"]["complete"] is False
    # finished subdomains hold their final labels
    full = run(image(), model)
    labels = np.asarray(stored["labels"][...])
    for r, c in zip(*np.nonzero(done), strict=True):
        box = (slice(16 * r, 16 * r + 16), slice(24 * c, 24 * c + 24))
        np.testing.assert_array_equal(labels[box], full.labels[box])


def test_resume_continues_to_the_uninterrupted_result(model, tmp_path):
    out = tmp_path / "resume.zarr"
    cancel = threading.Event()
    steps = segment_iter(image(), model, subdomain_size=SUB, dtype=torch.float64, schedule="recompute",
                         output=out, logits=True, features=True, cancel=cancel)
    for event in steps:
        if event.phase == "write" and event.done == 10:
            cancel.set()
    assert 10 <= np.asarray(open_output(out)["done"][...]).sum() < 35
    with pytest.raises(DDUNetError, match="exists"):
        run(image(), model, output=out)
    result = run(image(), model, schedule="wavefront", output=out, resume=True, features=True)
    assert_exact(result, reference(model, image()))
    with pytest.raises(DDUNetError, match="cannot resume"):
        run(image(), model, output=out, resume=True, probabilities=True, features=True)


def test_monolithic_resume_skips_finished_rows(model, ref, tmp_path):
    """A resumed monolithic run whose store holds whole finished rows decodes only the rest, exactly."""
    out = tmp_path / "rows.zarr"
    cancel = threading.Event()
    steps = segment_iter(image(), model, subdomain_size=SUB, dtype=torch.float64, schedule="wavefront",
                         output=out, logits=True, features=True, cancel=cancel)
    for event in steps:
        if event.phase == "write" and event.done >= 14:
            cancel.set()
    done = np.asarray(open_output(out)["done"][...]).astype(bool)
    assert done[:2].all() and not done.all()
    assert_exact(run(image(), model, schedule="monolithic", output=out, resume=True, features=True), ref)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subdomain_size": (18, 24)}, "multiple of 2\\*\\*depth = 4.*16 or 20 would work"),
        ({"subdomain_size": (96, 24)}, "larger than the 75x161 image"),
        ({"devices": ("cuda:3",)}, "not available"),
        ({"devices": ("foo",)}, "unknown device"),
        ({"memory_budget": "lots"}, "memory budget"),
        ({"schedule": "fast"}, "unknown schedule"),
    ],
)
def test_bad_requests_raise_before_work(model, kwargs, match):
    kwargs.setdefault("subdomain_size", SUB)
    with pytest.raises(DDUNetError, match=match):
        next(segment_iter(image(), model, **kwargs))


def test_bad_images(model):
    with pytest.raises(DDUNetError, match=r"image has 3 bands .* the model expects 1; choose bands with --channels"):
        next(segment_iter(image(channels=3), model, subdomain_size=SUB))
    with pytest.raises(DDUNetError, match="dimensionality"):
        next(segment_iter(np.zeros((2, 3, 80, 80)), model, subdomain_size=SUB))
    bad = image()
    bad[40, 100] = np.nan
    bad[50:52, 3] = np.inf
    with pytest.raises(DDUNetError, match="3 NaN/inf values; first at \\(y=40, x=100"):
        next(segment_iter(bad, model, subdomain_size=SUB))


def test_region_runs_scan_only_the_pixels_they_read(model):
    """A preview of one corner must not read (or reject) a huge image's far-away pixels."""
    bad = image()
    bad[-1, -1] = np.nan
    corner = (0, 1, 0, 1)
    preview = segment(bad, model, subdomain_size=SUB, region=corner)
    clean = segment(image(), model, subdomain_size=SUB, region=corner)
    np.testing.assert_array_equal(np.asarray(preview[: SUB[0], : SUB[1]]), np.asarray(clean[: SUB[0], : SUB[1]]))
    with pytest.raises(DDUNetError, match="1 NaN/inf value; first at"):
        next(segment_iter(bad, model, subdomain_size=SUB, region=(bad.shape[0] - 1, bad.shape[0], 0, bad.shape[1])))


def test_resnet18_encoder_with_a_three_row_halo():
    """ResNet-18 bottleneck at 1/16: 32x48 subdomains give 2-pixel bottleneck rows, so the halo spans 3 rows."""
    torch.manual_seed(0)
    net = DDUNet(ModelConfig(in_channels=3, num_classes=2, encoder="resnet18", depth=4, comm_features=8,
                             dropout=0.0)).double().eval()
    img = np.random.default_rng(0).normal(size=(5 * 32 - 3, 2 * 48 - 5, 3))
    plan = plan_grid(img.shape[:2], (32, 48), 16)
    x = torch.from_numpy(pad_to_grid(np.moveaxis(img, -1, 0), plan))[None]
    with torch.no_grad():
        ref = net(x, plan.grid)[0, :, : img.shape[0], : img.shape[1]].numpy()
    result = segment(img, net, subdomain_size=(32, 48), dtype=torch.float64, logits=True, schedule="wavefront",
                     return_result=True)
    np.testing.assert_allclose(result.logits, ref, rtol=0, atol=1e-10)
