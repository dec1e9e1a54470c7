"""training.reproduce never replaces an earlier run's results unless told to."""

from __future__ import annotations

from training import reproduce


def test_an_earlier_run_is_refused_before_any_training_starts(tmp_path, capsys, monkeypatch):
    earlier = tmp_path / "synthetic_ddunet_N"
    earlier.mkdir()
    (earlier / "best.pt").write_bytes(b"an earlier model")
    launched: list = []
    monkeypatch.setattr(reproduce, "run_all", lambda *args: launched.append(args))
    assert reproduce.main(["synthetic", "--quick", "--output", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(earlier) in lines[0] and "--overwrite" in lines[0]
    assert launched == [] and (earlier / "best.pt").read_bytes() == b"an earlier model"
    assert all("--overwrite" in cmd for cmd in reproduce.commands(tmp_path, 0, reproduce.QUICK, 1, True).values())
    assert not any("--overwrite" in cmd for cmd in reproduce.commands(tmp_path, 0, reproduce.QUICK, 1).values())
