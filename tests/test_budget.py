"""Query budgets (reports/budget.py): a sweep of attack.queries becomes one curve per defense against the queries
made, each point paired at its own budget, beside the noise floor; a store without a budget sweep draws none."""

from __future__ import annotations

import math

import pytest

from bench.grid import make_grid
from bench.store import Store
from reports import cells as cells_mod
from reports.budget import budget_families
from reports.build import build_report


def _cell(key, defense, params, seed, teacher_seed, queries, student, *, trace_z=None):
    metrics = {"teacher_drop_db": 0.1, "student_drop_db": student, "student_ssim_drop_pct": 1.0,
               "teacher_psnr": 30.0, "served_psnr": 29.9, "student_ref_psnr": 28.0, "student_psnr": 28.0 - student,
               "channels": "none" if defense == "none" else "answers", "student_shortcut": defense == "none",
               "queries_used": queries}
    if trace_z is not None:
        metrics["trace_z"] = trace_z
    return {"key": key, "task": "derain", "defense": defense, "attack": "vanilla_kd", "seed": seed,
            "profile": "smoke", "status": "done", "error": None, "metrics": metrics,
            "config": {"task": {"name": "derain", "version": "1", "params": {}},
                       "defense": {"name": defense, "version": "1", "params": params},
                       "attack": {"name": "vanilla_kd", "version": "1", "params": {"queries": queries}},
                       "seed": seed, "teacher_seed": teacher_seed, "budget_db": None, "profile": {"crop": 24}}}


def _store(tmp_path, *, budgets=(4, 16, 64)):
    store = Store(tmp_path / "s")
    n = 0
    for q in budgets:
        for t in (0, 1):
            for s in (0, 1, 2):
                n += 1
                store.put_cell(_cell(f"n{n}", "none", {}, s, t, q, 0.0))
                # a defense whose drop falls with the budget, by student seed: s adds 0.1 dB under both teachers
                store.put_cell(_cell(f"a{n}", "output_noise", {"sigma": 0.02}, s, t, q, 4.0 / math.log2(q) + 0.1 * s))
                store.put_cell(_cell(f"f{n}", "noise_floor", {}, s, t, q, 0.05 * s))
    return tmp_path / "s"


def test_a_query_sweep_in_one_line_plans_one_attack_per_budget():
    grid = make_grid({"tasks": ["derain"], "defenses": ["none"], "profile": "smoke",
                      "attacks": [{"name": "vanilla_kd", "sweep": {"queries": [4, 16, 64]}}]})
    assert sorted(s.attack_params["queries"] for s in grid.specs()) == [4, 16, 64]


def test_each_budget_is_one_point_paired_at_its_budget_over_student_seeds(tmp_path):
    cells = cells_mod.load(_store(tmp_path))
    (family,) = budget_families(cells)
    assert family.task == "derain" and family.attack == "vanilla_kd"  # nothing but the budget varies: no params
    assert list(family.curves) == ["output_noise (sigma=0.02)"]  # 'none' is its own reference: no curve
    points = family.curves["output_noise (sigma=0.02)"]
    assert [q for q, _ in points] == [4.0, 16.0, 64.0]
    for q, e in points:
        # mean over pairs; the interval over the 3 student seeds' means (0, 0.1, 0.2 above the base): t(2) * sd/sqrt(3)
        assert e.mean == pytest.approx(4.0 / math.log2(q) + 0.1)
        assert e.n == 6 and e.units == 3
        assert e.ci == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert [e.mean for _, e in family.floor] == pytest.approx([0.05, 0.05, 0.05])
    assert family.traces == {}


def test_a_store_with_one_budget_has_no_budget_curve(tmp_path):
    cells = cells_mod.load(_store(tmp_path, budgets=(16,)))
    assert budget_families(cells) == []
    rep = build_report(tmp_path / "s", tmp_path / "out", ("plots",), progress=False)
    assert not [f for f in rep.figures if f.kind == "budget"]


def test_report_draws_the_budget_figure_with_a_trace_panel_where_a_defense_traces(tmp_path):
    store = Store(_store(tmp_path))
    for i, q in enumerate((4, 16, 64)):
        for s in (0, 1, 2):
            store.put_cell(_cell(f"w{i}{s}", "watermark", {"eps": 0.01}, s, 0, q, 0.1, trace_z=2.0 * (i + 1)))
    (family,) = budget_families(cells_mod.load(tmp_path / "s"))
    (label,) = family.traces  # its label names its strength where the defense is registered
    assert label.startswith("watermark")
    assert [e.mean for _, e in family.traces[label]] == pytest.approx([2.0, 4.0, 6.0])
    assert "output_noise (sigma=0.02)" not in family.traces  # a defense that does not trace draws no trace
    rep = build_report(tmp_path / "s", tmp_path / "out", ("plots",), progress=False)
    (fig,) = [f for f in rep.figures if f.kind == "budget"]
    assert fig.image.startswith(b"\x89PNG")
    svg = (tmp_path / "out" / "plots" / f"{fig.filename[:-4]}.svg").read_text()
    assert "trace statistic" in svg and "queries the attack made" in svg and "noise floor" in svg


def test_the_family_is_named_by_what_differs_between_the_stores_attacks(tmp_path):
    store = Store(_store(tmp_path))
    for i, q in enumerate((4, 16)):
        cell = _cell(f"t{i}", "output_noise", {"sigma": 0.02}, 0, 0, q, 1.0)
        cell["config"]["attack"]["params"]["tta_average"] = True
        store.put_cell(cell)
    names = sorted(f.attack for f in budget_families(cells_mod.load(tmp_path / "s")))
    assert names == ["vanilla_kd", "vanilla_kd (tta_average=True)"]
