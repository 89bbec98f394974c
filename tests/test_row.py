"""The result row (issue 28): every field a cell's row holds, and every metric the pipeline writes, is documented
in bench/row.py, and a row that fails before it runs is built like one that finishes (with the code digests)."""

from __future__ import annotations

from bench.cell import resolve
from bench.pipeline import CellSpec, run_cell
from bench.row import METRIC_FIELDS, ROW_FIELDS, undocumented
from reports import cells as cells_mod


def test_every_field_and_metric_of_a_row_is_documented(home):
    plain = run_cell(CellSpec(task="derain", defense="asvp", profile="smoke"), home=home, progress=False)
    calibrated = run_cell(CellSpec(task="derain", defense="output_noise", profile="smoke", budget_db=0.1),
                          home=home, progress=False)
    for row in (plain, calibrated):
        assert set(ROW_FIELDS) <= set(row), set(ROW_FIELDS) - set(row)
        assert undocumented(row["metrics"]) == []
    assert {"strength", "calib_drop_db"} <= set(calibrated["metrics"])
    # what the reports read is documented too
    for name in (*cells_mod.DROPS, *cells_mod.COSTS, *cells_mod.SCORES, *cells_mod.TIMINGS, *cells_mod.PER_IMAGE):
        assert name in METRIC_FIELDS, name


def test_a_row_that_fails_before_it_runs_carries_the_code_digests():
    from bench.scheduler import _failed_row

    row = _failed_row(resolve(CellSpec(task="derain", defense="asvp", profile="smoke")), "teacher failed: x")
    assert set(ROW_FIELDS) <= set(row)
    assert set(row["versions"]["code"]) == {"task", "defense", "attack"}  # the scheduler's copy lacked them
    assert row["status"] == "failed" and row["metrics"] is None
