"""A grid committed in slices (one cells.csv per session, or two grids sharing cells) reads as one table:
``bench report --cells A --cells B`` and ``bench verdict --cells A --cells B`` equal the report of the whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench import BenchError
from bench.cli import main
from reports.cells import from_csv
from reports.leaderboard import build_tables, table_markdown

WHOLE = Path(__file__).resolve().parents[1] / "docs/results/claims-baselines/cells.csv"


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    """The committed baselines grid cut into two overlapping slices (its first 60 % and its last 60 %)."""
    folder = tmp_path_factory.mktemp("slices")
    whole = pd.read_csv(WHOLE)
    a, b = folder / "a.csv", folder / "b.csv"
    n = len(whole)
    whole.iloc[:int(0.6 * n)].to_csv(a, index=False)
    whole.iloc[int(0.4 * n):].to_csv(b, index=False)
    return folder, a, b


def test_overlapping_slices_read_as_the_whole_grid(slices):
    _, a, b = slices
    joined, whole = from_csv([a, b]), from_csv(WHOLE)
    assert len(joined) == len(whole) == len(pd.read_csv(WHOLE))  # the shared cells once
    assert [table_markdown(t) for t in build_tables(joined)] == [table_markdown(t) for t in build_tables(whole)]
    # one slice alone is not the whole: the test can tell
    assert [table_markdown(t) for t in build_tables(from_csv(a))] != [table_markdown(t) for t in build_tables(whole)]


def test_a_cell_with_different_results_in_two_files_is_a_one_line_error(slices):
    folder, a, _ = slices
    other = pd.read_csv(a)
    other.loc[0, "student_psnr"] += 0.5
    clash = folder / "clash.csv"
    other.to_csv(clash, index=False)
    with pytest.raises(BenchError, match=r"is in .*a\.csv and in .*clash\.csv with different results"):
        from_csv([a, clash])


def test_bench_report_and_verdict_take_several_cells_files(slices, capsys):
    folder, a, b = slices
    out = folder / "report"
    assert main(["report", "--cells", str(a), "--cells", str(b), "--out", str(out), "--format", "md,csv"]) == 0
    n = len(pd.read_csv(WHOLE))
    assert len(pd.read_csv(out / "cells.csv")) == n
    assert f"Store {a}, {b}: {n} finished cell(s)" in (out / "leaderboard.md").read_text()
    assert main(["verdict", "--cells", str(a), "--cells", str(b)]) == 0
    assert f"{n} finished cells" in capsys.readouterr().out
    assert main(["report", "--cells", str(a)]) == 2  # no store to write into: --out is needed
    assert "needs --out DIR" in capsys.readouterr().err
    assert main(["report", "--cells", str(a), "--home", str(folder), "--out", str(out)]) == 2
    assert "reads one source" in capsys.readouterr().err


def test_slices_of_one_configuration_from_different_code_are_refused(slices):
    """A cell's key names its configuration, not its code (a sweep recomputes a cell whose code changed), so two
    sessions' slices can hold seeds of one configuration computed by different code: refused, not pooled."""
    folder, _, _ = slices
    whole = pd.read_csv(WHOLE)
    old, new = whole.iloc[:len(whole) // 2].copy(), whole.iloc[len(whole) // 2:].copy()
    old["code"] = '{"attack": "aaaa", "defense": "dddd", "task": "tttt"}'
    new["code"] = '{"attack": "aaaa", "defense": "dddd", "task": "tttt"}'
    a, b = folder / "code-a.csv", folder / "code-b.csv"
    old.to_csv(a, index=False)
    new.to_csv(b, index=False)
    assert len(from_csv([a, b])) == len(whole)  # the same code: one table
    new["code"] = '{"attack": "aaaa", "defense": "eeee", "task": "tttt"}'
    new.to_csv(b, index=False)
    with pytest.raises(BenchError, match="computed by different code in .*code-a.csv, .*code-b.csv"):
        from_csv([a, b])


def test_a_store_holding_one_configuration_from_two_codes_is_not_reported_as_one(tmp_path):
    """The same guard on a store: a row whose recorded code digest differs from its configuration's others."""
    from bench.pipeline import CellSpec, run_cell
    from bench.store import Store
    from reports.cells import load

    for seed in (0, 1):
        run_cell(CellSpec(task="derain", defense="output_noise", profile="smoke", seed=seed), home=tmp_path,
                 progress=False)
    cells = load(tmp_path)
    assert cells["code"].notna().all() and cells["code"].nunique() == 1
    store = Store(tmp_path)
    row = next(r for r in store.cells() if r["seed"] == 1)
    row["versions"]["code"]["defense"] = "0" * 16  # as if computed before the defense's code changed
    store.put_cell(row)
    with pytest.raises(BenchError, match="computed by different code .*re-run bench sweep"):
        load(tmp_path)


def test_a_grid_run_in_two_sessions_with_lost_stores_equals_one_run(tmp_path, capsys):
    """Session 1 runs seeds 0-1 and commits its cells.csv; its store is lost. Session 2, in a fresh store, runs
    the whole grid with --skip-done: only seeds 2-3 run. The two slices read together equal the grid run whole."""
    grid = ["sweep", "--tasks", "derain", "--defenses", "none", "--profile", "smoke"]
    first, second, whole = tmp_path / "s1", tmp_path / "s2", tmp_path / "whole"
    assert main([*grid, "--seeds", "0-1", "--home", str(first)]) == 0
    assert main(["report", "--home", str(first), "--out", str(first / "r"), "--format", "csv"]) == 0
    capsys.readouterr()
    assert main([*grid, "--seeds", "0-3", "--home", str(second), "--skip-done", str(first / "r/cells.csv")]) == 0
    assert "2 cell(s) done in the committed cells.csv" in capsys.readouterr().err
    assert sorted(load_seeds(second)) == [2, 3]  # the committed seeds did not run again
    assert main(["report", "--home", str(second), "--out", str(second / "r"), "--format", "csv"]) == 0
    assert main([*grid, "--seeds", "0-3", "--home", str(whole)]) == 0
    joined = from_csv([first / "r/cells.csv", second / "r/cells.csv"])
    from reports.cells import load

    alone = load(whole)
    cols = ["seed", "teacher_psnr", "student_psnr", "student_ref_psnr"]
    pd.testing.assert_frame_equal(joined.sort_values("seed")[cols].reset_index(drop=True),
                                  alone.sort_values("seed")[cols].reset_index(drop=True))


def load_seeds(home: Path) -> list[int]:
    from reports.cells import load

    return load(home)["seed"].tolist()


def test_slices_whose_teachers_differ_are_refused(slices):
    """One key can train two different teachers on two machines (claims v3's derain slices: teacher seed 0 scored
    28.1586 dB in sessions 12-13 and 27.6251 dB in session 14): such cells are not paired by seed, so reading them
    as one table is refused, naming the files; slices of one teacher read as before."""
    folder, a, _ = slices
    whole = pd.read_csv(WHOLE)
    derain = whole[whole["task"] == "derain"]
    first, rest = derain.iloc[:len(derain) // 2], derain.iloc[len(derain) // 2:].copy()
    same, other = folder / "same.csv", folder / "other.csv"
    rest.to_csv(same, index=False)
    from_csv([a, same])  # one teacher per seed: fine
    seed = int(rest["teacher_seed"].iloc[0])
    rest.loc[rest["teacher_seed"] == seed, "teacher_psnr"] += 0.5  # another machine's teacher of that seed
    rest.to_csv(other, index=False)
    first.to_csv(folder / "first.csv", index=False)
    with pytest.raises(BenchError, match=rf"derain teacher seed {seed}: the files hold cells of two different "
                                         r"teachers \(.* dB in .*first\.csv; .* dB in .*other\.csv\)"):
        from_csv([folder / "first.csv", other])


def test_a_sweep_skipping_cells_of_another_teacher_stops_before_its_cells(tmp_path, capsys):
    """--skip-done cannot tell from a key that a committed file's cells were computed on another machine's
    teacher (claims v3's derain slices 1-2: 0.53 dB apart under one key); the sweep scores its own teacher after
    training it and stops, in one line, before any cell runs. The same file with its own teacher's score runs on."""
    grid = ["sweep", "--tasks", "derain", "--defenses", "none", "--profile", "smoke"]
    first, second = tmp_path / "s1", tmp_path / "s2"
    assert main([*grid, "--seeds", "0", "--home", str(first)]) == 0
    assert main(["report", "--home", str(first), "--out", str(first / "r"), "--format", "csv"]) == 0
    committed = pd.read_csv(first / "r/cells.csv")
    other = committed.assign(teacher_psnr=committed["teacher_psnr"] + 0.5)  # as if another machine's teacher
    other_file = tmp_path / "other.csv"
    other.to_csv(other_file, index=False)
    capsys.readouterr()
    assert main([*grid, "--seeds", "0-1", "--home", str(second), "--skip-done", str(other_file)]) == 2
    err = capsys.readouterr().err
    assert "derain teacher seed 0: this store's teacher scores" in err and "other.csv" in err
    from bench.store import Store

    assert Store(second).cells() == []  # no cell ran on the mismatched teacher
    assert main([*grid, "--seeds", "0-1", "--home", str(second), "--skip-done", str(first / "r/cells.csv")]) == 0
    assert sorted(load_seeds(second)) == [1]  # its teacher kept; seed 0 skipped as committed
