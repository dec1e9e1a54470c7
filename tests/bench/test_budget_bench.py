"""``bench --budget``: one case measured in its own process, and the table that reports it."""

from __future__ import annotations

from napari_ddunet.bench import budget
from napari_ddunet.core.inference.engine import SCHEDULES


def test_one_case_is_measured_in_a_fresh_process(tmp_path) -> None:
    case = budget.Case("strip", (512, 1024), 64 * budget.MB, rows=1)
    budget.write_image(budget.image_path(tmp_path, case.shape), case.shape)
    result = budget.measure(case, tmp_path, threads=1, timeout=600)
    assert result.error is None, result.error
    assert result.schedule in SCHEDULES and result.rows_run >= 1
    assert result.estimate <= case.budget and result.inflight >= 1 and result.writes >= 1
    assert result.peak_rss >= result.baseline_rss > 0 and result.ratio == result.above / case.budget
    table = budget.format_table([result], {"cpu": "test", "load_average": (1.0, 1.0, 1.0)})
    assert "| strip | 512 x 1024 | 64 MB |" in table and "largest peak / budget" in table
    assert not list(tmp_path.glob("budget_out_*")), "each case removes its output store"


def test_the_table_covers_the_issue_cases() -> None:
    full = budget.cases(quick=False)
    assert {c.budget for c in full if c.group == "budget"} == {b * budget.MB for b in (64, 128, 256, 512, 1000, 2000)}
    assert {c.shape for c in full if c.group == "size"} == {(2048, 2048), (8192, 8192), (32768, 32768)}
    assert {c.shape for c in full if c.group == "strip"} == {(512, 131072)}
    assert len(budget.cases(quick=True)) < len(full)


def test_a_budget_too_small_is_a_refused_row(tmp_path) -> None:
    case = budget.Case("strip", (512, 1024), 10 * budget.MB, rows=1)
    budget.write_image(budget.image_path(tmp_path, case.shape), case.shape)
    result = budget.measure(case, tmp_path, threads=1, timeout=600)
    assert result.error is None and result.refused.endswith("MB") and result.peak_rss is None
    assert "refused: needs at least" in budget.format_table([result], {"cpu": "test"})
    assert not list(tmp_path.glob("budget_out_*"))
