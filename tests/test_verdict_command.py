"""``bench verdict`` (issue 29 item 8): the README's "Does ASVP hold up?" is what the command prints from the
committed claims-grid CSV, a committed cells.csv reads back as the store it came from, and the verdict's
comparisons are the leaderboard's own (one family)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import BenchError
from bench.cli import main
from reports import cells as cells_mod
from reports.leaderboard import WORST, build_tables
from reports.verdict import judge_task, section_of, verdict_markdown

ROOT = Path(__file__).resolve().parents[1]
CLAIMS_CSV = ROOT / "docs" / "results" / "claims-v2" / "cells.csv"
# The README's verdict: claims grid v3, committed in slices beside claims-baselines (the files and order of
# docs/results/claims-v3/slices/finish.sh, which writes it; superseded/ never).
V3_GRID = "grids/claims-v3.yaml"
V3_FILES = ["docs/results/claims-baselines/cells.csv"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "results" / "claims-v3" / "slices").glob("[0-9]*.csv"))


@pytest.fixture(scope="module")
def claims():
    return cells_mod.from_csv(CLAIMS_CSV)


def test_the_readme_verdict_is_what_bench_verdict_prints():
    readme = (ROOT / "README.md").read_text()
    section = section_of(readme)
    assert section is not None, "README.md lost its verdict markers"
    claims_v3 = cells_mod.from_csv([ROOT / f for f in V3_FILES], grid=ROOT / V3_GRID)
    expected = verdict_markdown(claims_v3, source=", ".join(V3_FILES))
    assert section == expected, ("README's verdict differs from the data: run "
                                 "docs/results/claims-v3/slices/finish.sh")


def test_the_verdict_reads_its_comparisons_from_the_leaderboards_family(claims):
    tables = build_tables(claims)
    (worst,) = [t for t in tables if t.task == "derain" and t.attack == WORST]
    rows = [r for r in worst.rows if r.group == "matched test cost 0.5 dB"]
    asvp = next(r for r in rows if r.defense_base.startswith("asvp"))
    priors = [r for r in rows if not r.floor and r is not asvp and r.rank is not None]
    p = max(asvp.p_vs[r.config_id] for r in priors)
    text = judge_task("derain", tables, claims)["priors"]
    assert f"0.5 dB: above all {len(priors)} (Holm p <= {p:.3f})" in text


def _cell(key, defense, params, seed, teacher_seed, attack, *, teacher, student):
    metrics = {"teacher_drop_db": teacher, "student_drop_db": student, "student_ssim_drop_pct": 2 * student,
               "worst_teacher_drop_db": 2 * teacher, "served_fidelity_db": 40.0, "input_psnr": 20.0,
               "teacher_psnr": 30.0, "served_psnr": 30.0 - teacher, "student_ref_psnr": 28.0, "student_ref_ssim": 0.9,
               "student_psnr": 28.0 - student, "student_ssim": 0.9 - student / 100, "student_gt_psnr": 27.5,
               "channels": "answers", "student_shortcut": False, "queries_used": 16,
               "teacher_drop_db_per_image": [teacher, teacher]}
    return {"key": key, "task": "derain", "defense": defense, "attack": attack, "seed": seed, "profile": "quick",
            "status": "done", "error": None, "metrics": metrics,
            "config": {"task": {"name": "derain", "version": "1", "params": {}},
                       "defense": {"name": defense, "version": "1", "params": params},
                       "attack": {"name": attack, "version": "1", "params": {}},
                       "seed": seed, "teacher_seed": teacher_seed, "budget_db": None, "profile": {"crop": 24},
                       "numerics": {"device": "cpu", "threads": 1, "precision": "fp32"}}}


def seeded_store(home):
    from bench.store import Store

    store = Store(home)
    for attack in ("vanilla_kd", "feature_kd"):
        for t in (0, 1):
            for s in range(3):
                j = 0.01 * ((5 * s + 3 * t + len(attack)) % 7)
                store.put_cell(_cell(f"{attack}f{t}{s}", "noise_floor", {}, s, t, attack, teacher=0.001, student=j))
                for h, cost, drop in ((1.2, 0.05, 0.3), (2.0, 0.8, 1.5)):
                    store.put_cell(_cell(f"{attack}a{h}{t}{s}", "asvp", {"h": h}, s, t, attack, teacher=cost + j,
                                         student=drop + 2 * j))
                for sigma, cost, drop in ((0.01, 0.2, 0.1), (0.03, 1.2, 0.4)):
                    store.put_cell(_cell(f"{attack}o{sigma}{t}{s}", "output_noise", {"sigma": sigma}, s, t, attack,
                                         teacher=cost + j, student=drop - j))
    return home


def test_a_report_csv_reads_back_as_its_store(tmp_path):
    """The tables from a store and from the cells.csv its report wrote are the same tables."""
    home = seeded_store(tmp_path / "s")
    from reports import build_report

    build_report(home, tmp_path / "out", ("csv",), progress=False)
    direct = build_tables(cells_mod.load(home))
    again = build_tables(cells_mod.from_csv(tmp_path / "out" / "cells.csv"))
    assert [(t.task, t.attack) for t in direct] == [(t.task, t.attack) for t in again]
    for a, b in zip(direct, again):
        assert [(r.defense, r.group, r.pairs) for r in a.rows] == [(r.defense, r.group, r.pairs) for r in b.rows]
        for ra, rb in zip(a.rows, b.rows):
            assert (math.isnan(ra.student.mean) and math.isnan(rb.student.mean)) or \
                ra.student.mean == pytest.approx(rb.student.mean)
            assert ra.rank == rb.rank


def test_bench_verdict_writes_the_readme_section_and_refuses_bad_input(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench verdict: start -->\nOLD-SECTION\n<!-- bench verdict: end -->\n\ntail\n")
    assert main(["verdict", "--cells", str(CLAIMS_CSV), "--tasks", "derain", "--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    text = readme.read_text()
    assert "OLD-SECTION" not in text and text.endswith("tail\n") and section_of(text) == out
    assert "| claim | derain |" in out
    bad = ((["verdict"], "one source"), (["verdict", "--cells", str(tmp_path / "nope.csv")], "no such file"),
           (["verdict", "--cells", str(ROOT / "README.md")], "report's cells.csv"))
    for argv, words in bad:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    (tmp_path / "plain.md").write_text("no markers\n")
    plain = ["verdict", "--cells", str(CLAIMS_CSV), "--tasks", "derain", "--readme", str(tmp_path / "plain.md")]
    assert main(plain) == 2
    assert "no verdict markers" in capsys.readouterr().err
    assert (tmp_path / "plain.md").read_text() == "no markers\n"  # nothing lost


def test_the_worst_case_table_has_the_noise_floor_row(tmp_path):
    """Issue 33 item 6: the table judging defenses against their strongest attacker had no noise-floor row."""
    tables = build_tables(cells_mod.load(seeded_store(tmp_path / "s")))
    (worst,) = [t for t in tables if t.attack == WORST]
    for name, rows in worst.groups():
        floors = [r for r in rows if r.floor]
        assert len(floors) == 1 and floors[0].student.n, name
        assert all(math.isnan(r.p_floor) is False for r in rows if not r.floor and r.rank is not None), name


def test_a_task_without_asvp_cells_is_not_judged_as_if_asvp_failed(tmp_path):
    """A grid run priors first (claims v3's slices) has tasks with no ASVP cell yet: the verdict must say so,
    not "ASVP never costs as little as 0.1 dB" or "no prior defense reaches a matched cost"."""
    cells = cells_mod.load(seeded_store(tmp_path / "s"))
    tables = build_tables(cells)
    full = judge_task("derain", tables, cells)
    assert "above" in full["priors"] or "not separable" in full["priors"], full["priors"]
    priors_only = cells[cells["defense"] != "asvp"]
    judged = judge_task("derain", build_tables(priors_only), priors_only)
    assert set(judged.values()) == {"not judged: no ASVP cell finished on this task (a partial grid; run its "
                                    "ASVP rows)"}
    asvp_only = cells[cells["defense"] != "output_noise"]
    assert judge_task("derain", build_tables(asvp_only), asvp_only)["priors"] == "no prior defense run on this task"


def test_a_grid_picks_its_own_cells_from_committed_csvs_and_names_what_it_lacks(tmp_path):
    """claims v3 is reported from slices plus docs/results/claims-baselines/cells.csv, which also holds defenses
    and attacks v3 does not run (watermark, the skeptical student): --grid must keep only v3's cells, list as
    missing only cells the grid names, and count a configuration and seed pair once when an older file holds
    it without its code (the sweep ran such a cell again, under the same key)."""
    import dataclasses

    import yaml

    from bench.cell import resolve
    from bench.grid import load_file, make_grid
    from bench.store import Store
    from reports import build_report

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"profile": "quick", "tasks": ["derain"], "seeds": "0-2",
                                    "defenses": ["noise_floor", {"name": "output_noise", "strengths": [0.01, 0.03],
                                                                 "attacks": ["vanilla_kd"]}],
                                    "attacks": ["vanilla_kd", "feature_kd"]}))
    specs = make_grid(load_file(grid)).specs()
    assert len(specs) == 12  # the floor x 2 attacks x 3 seeds + output noise x 2 strengths x vanilla x 3 seeds
    store, older = Store(tmp_path / "s"), Store(tmp_path / "old")

    def put(key, spec, code=True, student=0.1, where=store):
        row = _cell(key, spec.defense, {}, spec.seed, 0, spec.attack, teacher=0.01, student=student)
        row["config"] = resolve(dataclasses.replace(spec, threads=1)).config()
        if code:
            row["versions"] = {"code": {"defense": "d1", "attack": "a1", "task": "t1"}}
        where.put_cell(row)

    for i, spec in enumerate(specs[:-1]):  # the last cell of the grid never ran
        put(f"k{i}", spec, student=0.1 + 0.01 * i)
    put("k0", specs[0], code=False, student=9.0, where=older)  # k0 from before cells.csv recorded code
    other = dataclasses.replace(specs[0], defense="output_noise", defense_params={"sigma": 0.2})
    put("other", other, where=older)  # another grid's cell
    for name in ("s", "old"):
        build_report(tmp_path / name, tmp_path / f"csv-{name}", ("csv",), progress=False)
    csvs = [tmp_path / "csv-old" / "cells.csv", tmp_path / "csv-s" / "cells.csv"]
    for files in (csvs, csvs[::-1]):
        every = cells_mod.from_csv(files)
        assert len(every) == 12  # k0 once, the other grid's cell too
        assert every.loc[every["key"] == "k0", "student_drop_db"].item() == pytest.approx(0.1)  # the recorded k0
    mine = cells_mod.from_csv(csvs, grid=grid)
    assert sorted(mine["key"]) == sorted(f"k{i}" for i in range(11))
    csv = csvs[1]
    report = build_report(None, tmp_path / "r", ("md",), progress=False, grid=grid, csv_files=[csv])
    lacking = [m for m in report.messages if "have no finished result" in m]
    assert lacking == [f"1 of the 12 cells of {grid} have no finished result here (a partial grid: run bench sweep "
                       "on it to finish them): derain · output_noise · vanilla_kd: 1 of 6."], report.messages
    # without the plan, the floor's feature-KD table lacking output noise reads as an unfinished sweep
    plain = build_report(None, tmp_path / "p", ("md",), progress=False, csv_files=[csv])
    assert any("no finished cells for output_noise" in m for m in plain.messages), plain.messages
    assert not any("no finished cells for" in m for m in report.messages)
    elsewhere = tmp_path / "lowlight.yaml"
    elsewhere.write_text(yaml.safe_dump({"profile": "quick", "tasks": ["lowlight"], "defenses": ["noise_floor"],
                                         "attacks": ["vanilla_kd"], "seeds": "0-1"}))
    with pytest.raises(BenchError, match="none of its 2 cells is in"):
        cells_mod.from_csv(csv, grid=elsewhere)
