"""Report views: the "who pays" table (test-user cost beside attacker-query cost, over teacher seeds) and a report
of one grid's cells."""

import math

import pandas as pd
from scipy import stats

from reports.askers import cells_of, markdown, who_pays


def _cells(rows):
    base = {"status": "done", "profile_id": "p", "profile_label": "quick", "task_id": "t", "task_label": "derain",
            "budget_db": math.nan, "calibrated": False}
    return pd.DataFrame([{**base, **r} for r in rows])


def _row(defense, teacher_seed, seed, test, attacker, **kw):
    return {"defense": defense, "defense_label": defense, "config_id": defense, "teacher_seed": teacher_seed,
            "seed": seed, "teacher_drop_db": test, "attacker_query_drop_db": attacker, **kw}


def test_costs_are_over_teacher_seeds_and_the_undefended_row_is_left_out():
    rows = [_row("none", t, s, 0.0, 0.0) for t in (0, 1) for s in (0, 1)]
    # adaptive misinformation: cheap for test users, dear on the attacker's queries; the student seed does not
    # change a teacher-side cost, so two student seeds of one teacher are one unit, not two
    am = {0: (0.1, 2.0), 1: (0.3, 3.0), 2: (0.2, 4.0)}
    rows += [_row("am", t, s, *am[t]) for t in am for s in (0, 1, 2)]
    (table,) = who_pays(_cells(rows))
    (payer,) = table.rows
    assert payer.defense == "am" and payer.teacher_seeds == (0, 1, 2)
    half = stats.t.ppf(0.975, 2) * pd.Series([2.0, 3.0, 4.0]).std() / math.sqrt(3)
    assert math.isclose(payer.attacker.mean, 3.0) and math.isclose(payer.attacker.ci, half)
    assert payer.attacker.units == 3 and payer.attacker.n == 9
    assert math.isclose(payer.test_users.mean, 0.2)
    text = markdown([table])
    assert "Who pays: derain" in text and f"3.000 ± {half:.3f}" in text


def test_two_versions_of_a_task_are_two_tables_and_one_teacher_seed_has_no_interval():
    rows = [_row("am", 0, 0, 0.1, 1.0), _row("am", 0, 0, 0.5, 5.0, task_id="t2")]
    tables = who_pays(_cells(rows))
    assert len(tables) == 2 and all(t.rows[0].attacker.ci is None for t in tables)
    assert all("±" not in c for t in tables for c in cells_of(t.rows[0]))


def test_a_store_without_the_metric_gives_no_section():
    rows = [_row("am", 0, 0, 0.1, math.nan)]
    assert who_pays(_cells(rows)) == [] and markdown([]) == ""


def test_the_html_table_has_a_row_per_configuration():
    from reports.askers import html
    from reports.html import esc

    rows = [_row("am", 0, 0, 0.1, 1.0), _row("noise", 0, 0, 0.01, 0.02)]
    (table,) = who_pays(_cells(rows))
    page = html(table, esc)
    assert page.count("<tr>") == 3 and "Attacker&#x27;s queries" in page and "<td>am</td>" in page


def test_a_report_of_one_grid_keeps_only_that_grids_cells_whatever_their_thread_count(tmp_path):
    import dataclasses

    import pytest
    import yaml

    from bench import BenchError
    from bench.cell import resolve
    from bench.grid import load_file, make_grid
    from reports.cells import only_grid

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"profile": "smoke", "tasks": ["derain"], "defenses": ["none", "output_noise"],
                                    "seeds": "0-1"}))
    specs = make_grid(load_file(grid)).specs()
    # as a sweep with --n-jobs 2 stores them: one thread per job, in the key
    swept = [resolve(dataclasses.replace(s, threads=1)).config() for s in specs]
    other = resolve(dataclasses.replace(specs[0], seed=7, threads=1)).config()
    cells = pd.DataFrame({"config": swept + [other], "key": [f"k{i}" for i in range(len(swept) + 1)]})
    assert list(only_grid(cells, grid)["key"]) == [f"k{i}" for i in range(4)]
    with pytest.raises(BenchError, match="none of its 4 cells is in this store"):
        only_grid(cells.iloc[[-1]], grid)
    with pytest.raises(BenchError, match="read the store with --home"):
        only_grid(cells.drop(columns="config"), grid)
