"""The memory budget is a bound: every queue follows it, huge grids plan lazily, a budget too small is refused.

Structural checks through the scheduler's own accounting (no wall clock): the subdomains in flight between
reading and the main thread, those waiting for the writer, the bottlenecks and skips held.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import tracemalloc

import numpy as np
import pytest
import torch
import zarr
from engine_cases import SUB, image, reference, tiny_model

from napari_ddunet import DDUNet, ModelConfig
from napari_ddunet.cli import main
from napari_ddunet.core.errors import DDUNetError
from napari_ddunet.core.inference.engine import segment
from napari_ddunet.core.inference.progress import Phase
from napari_ddunet.core.inference.request import build_request, parse_memory
from napari_ddunet.core.inference.schedule import RUNTIME, BudgetError, plan_schedule
from napari_ddunet.core.inference.scheduler import Scheduler
from napari_ddunet.core.inference.store import open_sink

WIDE = (32, 24 * 40)   # 2 x 40 subdomains of 16 x 24: a strip, as 512 x 131072 is for 256^2 subdomains


def prepare(img, model, budget, *, output=None, subdomain=SUB, dtype=torch.float64, cancel=None, **options):
    """The engine's stages up to the scheduler, so a test can read its accounting after the run."""
    values = {"subdomain_size": subdomain, "devices": ("cpu",), "output": output, "memory_budget": budget,
              "features": False, "probabilities": False, "logits": True, "channel_axis": None, "region": None,
              "communicate": None, "resume": False, "overwrite": False, "dtype": dtype, "schedule": None,
              "distributed": None}
    request = build_request(img, model, **{**values, **options})
    plan = plan_schedule(request)
    return request, plan, lambda schedule=plan: Scheduler(request, schedule, open_sink(request, schedule), cancel)


def drain(scheduler: Scheduler) -> bool:
    run = scheduler.run()
    try:
        while True:
            next(run)
    except StopIteration as stop:
        return stop.value


@pytest.fixture(scope="module")
def model() -> DDUNet:
    return tiny_model()


@pytest.mark.parametrize("budget", [RUNTIME + 700_000, RUNTIME + 2_000_000])
def test_every_queue_follows_the_budget_on_a_wide_strip(model, budget):
    img = image(WIDE)
    request, plan, make = prepare(img, model, budget)
    assert plan.estimate <= budget and plan.name in ("wavefront", "recompute")
    scheduler = make()
    assert drain(scheduler) is False
    cols, k = 40, request.halo_rows
    # the unbounded scheduler launched a whole row (40 reads and device jobs) and wrote it at the band's end
    assert 1 <= scheduler.peak_inflight <= plan.inflight < cols
    assert 1 <= scheduler.peak_writes <= plan.writes < cols
    assert scheduler.cache.peak <= (2 * k + 2) * cols
    assert scheduler.peak_held <= ((k + 2) * cols if plan.name == "wavefront" else 0)
    np.testing.assert_allclose(np.asarray(scheduler.sink.outputs()["logits"]), reference_wide(model, img),
                               rtol=0, atol=1e-10)


def reference_wide(model: DDUNet, img: np.ndarray) -> np.ndarray:
    from napari_ddunet.core.inference.grid import pad_to_grid, plan_grid

    plan = plan_grid(img.shape, SUB, model.config.downsampling)
    with torch.no_grad():
        out = model(torch.from_numpy(pad_to_grid(img[None], plan))[None], plan.grid)
    return out[0, :, : img.shape[0], : img.shape[1]].numpy()


def test_queue_bounds_grow_with_the_budget_and_stay_within_it(model):
    budgets = tuple(RUNTIME + b for b in (300_000, 400_000, 700_000))
    plans = [prepare(image(WIDE), model, budget, schedule="recompute")[1] for budget in budgets]
    assert [(p.inflight, p.writes) for p in plans] == sorted((p.inflight, p.writes) for p in plans)
    assert plans[0].inflight < plans[-1].inflight
    for budget in (*budgets, RUNTIME + 2_000_000, RUNTIME + 8_000_000, RUNTIME + 50_000_000):
        assert prepare(image(WIDE), model, budget)[1].estimate <= budget


def test_communication_in_column_chunks_is_exact(model):
    """The communication network on 2 columns (+ halo) at a time equals it on the whole width."""
    img = image()
    _, plan, make = prepare(img, model, "1GB", schedule="recompute", features=True)
    assert plan.halo_cols >= 1 and plan.comm_cols == 7
    whole = make()
    drain(whole)
    chunked = make(dataclasses.replace(plan, comm_cols=2))
    drain(chunked)
    ref = reference(model, img)
    for name in ("logits", "communicated"):
        got = np.asarray(chunked.sink.outputs()[name])
        np.testing.assert_allclose(got, ref[name], rtol=0, atol=1e-10)
        np.testing.assert_array_equal(got, np.asarray(whole.sink.outputs()[name]))


def test_a_budget_below_every_schedule_is_refused_naming_one_that_works(model, tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(BudgetError) as caught:
        segment(image(), model, subdomain_size=SUB, memory_budget=50_000, output=out, dtype=torch.float64)
    message = str(caught.value)
    assert "\n" not in message
    needed = re.search(r"needs at least (\S+); pass --memory-budget (\S+) or more", message)
    assert needed is not None and needed.group(1) == needed.group(2)
    assert not out.exists()   # refused before the store was created
    result = segment(image(), model, subdomain_size=SUB, memory_budget=needed.group(1), output=out,
                     dtype=torch.float64, logits=True, return_result=True)
    assert result.schedule in ("wavefront", "recompute")
    np.testing.assert_allclose(np.asarray(result.logits[...]), reference(model, image())["logits"], atol=1e-10)


def test_a_forced_schedule_that_does_not_fit_is_refused(model):
    with pytest.raises(BudgetError, match=r"schedule monolithic .* needs at least"):
        segment(image(), model, subdomain_size=SUB, memory_budget=RUNTIME + 500_000,
                schedule="monolithic")


def test_cli_refuses_a_small_and_an_infinite_budget_in_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    from napari_ddunet import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "m.pt", DDUNet(ModelConfig(in_channels=1, num_classes=2, depth=2,
                                                                       base_channels=2, comm_features=4)))
    npy = tmp_path / "img.npy"
    np.save(npy, np.random.default_rng(0).random((64, 96), dtype=np.float32))
    for budget, expected in (("1e999", "not a finite size"), ("1kB", "needs at least")):
        out = tmp_path / "out.zarr"
        code = main(["predict", str(checkpoint), str(npy), str(out), "--subdomain-size", "32", "32",
                     "--memory-budget", budget])
        err = capsys.readouterr().err.strip()
        assert code == 2 and expected in err and len(err.splitlines()) == 1
        assert not out.exists()


@pytest.mark.parametrize("value", ["1e999", "1e999GB", float("inf"), float("nan"), 10**400])
def test_parse_memory_refuses_what_is_no_size(value):
    with pytest.raises(DDUNetError, match="not a finite size"):
        parse_memory(value)


def huge_input(tmp_path) -> zarr.Array:
    """A sparse 1e6 x 1e6 uint8 zarr: nothing written, every chunk its fill value."""
    return zarr.create_array(str(tmp_path / "huge.zarr"), shape=(10**6, 10**6), chunks=(4096, 4096), dtype="u1")


def test_a_huge_grid_plans_lazily_and_refuses_a_small_budget(tmp_path):
    net = tiny_model(depth=2, comm_features=4).float()
    tracemalloc.start()
    try:
        with pytest.raises(BudgetError, match="needs at least"):
            prepare(huge_input(tmp_path), net, "64MB", output=tmp_path / "out.zarr", subdomain=(512, 512),
                    dtype=torch.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20   # a 1954 x 1954 grid: nothing per subdomain was built (measured 0.04 MB)
    assert not (tmp_path / "out.zarr").exists()


def test_a_huge_grid_starts_within_its_budget(tmp_path):
    """Planning and the first subdomains of a 1e6 x 1e6 image hold O(rows + cols), then a cancel stops it."""
    torch.manual_seed(0)
    net = DDUNet(ModelConfig(in_channels=1, num_classes=2, depth=4, base_channels=2, comm_features=2)).eval()
    cancel = threading.Event()
    tracemalloc.start()
    try:
        request, plan, make = prepare(huge_input(tmp_path), net, "256MB", output=tmp_path / "out.zarr",
                                      subdomain=(512, 512), dtype=torch.float32, cancel=cancel, logits=False)
        scheduler = make()
        planned = tracemalloc.get_traced_memory()[1]
        run = scheduler.run()
        encoded = 0
        for event in run:
            encoded += event.phase == Phase.ENCODE
            if encoded == 6:
                cancel.set()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rows, cols = request.plan.grid
    assert (rows, cols) == (1954, 1954) and plan.name in ("wavefront", "recompute")
    # the (rows, cols) uint8 masks of the store's progress record are the only per-subdomain arrays
    assert planned < 3 * rows * cols + 8 * 2**20
    assert scheduler.peak_inflight <= plan.inflight < 16
    assert peak - planned < 32 * 2**20
