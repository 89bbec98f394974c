"""Verdicts that hold: 8-bit answers, the noise floor, teacher seeds and strength sweeps in grids, and the
leaderboard's matched-test-cost ranking, significance marks and calib->test transfer warnings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench import BenchError
from bench.calibrate import transfer_warning
from bench.cli import main
from bench.grid import make_grid
from bench.pipeline import CellSpec, reference_config, resolve, run_cell
from bench.query import QueryAPI
from bench.registry import DEFENSES
from bench.store import Store
from reports import build_report


# ------------------------------------------------------------------------------------------ 8-bit answers
def test_served_answers_are_exact_multiples_of_1_255_by_default():
    cell = resolve(CellSpec(task="derain", defense="output_noise", profile="smoke"))
    assert cell.profile.answer_bits == 8
    torch.manual_seed(0)
    teacher = cell.teacher_arch().eval()
    x = torch.rand(2, 3, 24, 24)
    with cell.defense.serve(teacher, answer_bits=cell.profile.answer_bits) as served:
        answers = QueryAPI(served, 4).query(x)
    levels = answers * 255
    assert torch.equal(levels, levels.round()) and answers.min() >= 0 and answers.max() <= 1
    with cell.defense.serve(teacher, answer_bits=0) as served:  # the parameter that turns it off
        raw = served(x)
    assert not torch.equal(raw * 255, (raw * 255).round())
    assert (answers - raw.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6  # rounding, nothing else


def test_answer_bits_is_part_of_every_key_that_depends_on_it():
    eight = resolve(CellSpec(task="derain", profile="smoke"))
    floats = resolve(CellSpec(task="derain", profile="smoke", profile_params={"answer_bits": 0}))
    assert eight.key != floats.key
    assert reference_config(eight, "t") != reference_config(floats, "t")
    with pytest.raises(BenchError, match="answer_bits"):
        resolve(CellSpec(task="derain", profile="smoke", profile_params={"answer_bits": 17}))


# ------------------------------------------------------------------------------------------ the noise floor
def test_noise_floor_trains_its_own_student_at_an_invisible_teacher_cost(shared_home):
    row = run_cell(CellSpec(task="derain", defense="noise_floor", profile="smoke"), home=shared_home,
                   progress=False)
    m = row["metrics"]
    assert not m["student_shortcut"]  # its own student, not the reference one
    assert abs(m["teacher_drop_db"]) < 0.01 and m["worst_teacher_drop_db"] < 0.05
    assert 40 < m["served_fidelity_db"] < 100  # answers do change (a grey level here and there)
    per_image = m["teacher_drop_db_per_image"]
    assert len(per_image) == len(m["served_psnr_per_image"]) and max(per_image) == m["worst_teacher_drop_db"]
    assert DEFENSES.get("noise_floor").strength is None  # never calibrated or swept


# ------------------------------------------------------------------------------------------ grids
def test_a_strength_sweep_is_one_line_per_defense_and_teacher_seeds_are_an_axis():
    grid = make_grid({"tasks": ["derain"], "defenses": ["none", {"name": "asvp", "strengths": "auto"},
                                                           {"name": "mad", "strengths": [0.01, 0.03]}],
                      "seeds": "0-1", "teacher_seeds": [0, 3], "profile": "smoke"})
    specs = grid.specs()
    spread = DEFENSES.get("asvp").strength_spread
    assert sorted({s.defense_params["h"] for s in specs if s.defense == "asvp"}) == sorted(spread)
    assert sorted({s.defense_params["eps"] for s in specs if s.defense == "mad"}) == [0.01, 0.03]
    assert {(s.teacher_seed, s.seed) for s in specs} == {(0, 0), (0, 1), (3, 0), (3, 1)}
    assert len(specs) == (1 + len(spread) + 2) * 4
    with pytest.raises(BenchError, match="no strength parameter"):
        make_grid({"defenses": [{"name": "none", "strengths": [1]}], "tasks": ["derain"]})
    with pytest.raises(BenchError, match="teacher_seed or teacher_seeds"):
        make_grid({"tasks": ["derain"], "teacher_seed": 0, "teacher_seeds": [1]})
    assert make_grid({"tasks": ["derain"]}, teacher_seeds="1-2").teacher_seeds == [1, 2]


def test_bench_run_runs_one_cell_per_teacher_seed(tmp_path, capsys):
    assert main(["run", "--task", "derain", "--profile", "smoke", "--teacher-seeds", "0,1",
                 "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "teacher seed 0" in out and "teacher seed 1" in out
    rows = Store(tmp_path).cells()
    assert sorted(r["config"]["teacher_seed"] for r in rows) == [0, 1]


def test_transfer_warning_flags_a_budget_that_did_not_hold_on_test():
    assert transfer_warning(0.1, 0.15) is None and transfer_warning(1.0, 1.08) is None
    assert "did not transfer" in transfer_warning(0.1, 0.25)  # 2.5x
    assert "did not transfer" in transfer_warning(1.0, 1.2)  # 0.2 dB off
    assert "did not transfer" in transfer_warning(0.5, -0.1)


# ------------------------------------------------------------------------ the leaderboard, hand-written store
def _cell(key, defense, params, seed, teacher_seed, *, teacher, student, budget=None):
    metrics = {"teacher_drop_db": teacher, "student_drop_db": student, "student_ssim_drop_pct": 10 * student,
               "worst_teacher_drop_db": 2 * teacher, "served_fidelity_db": 40.0, "teacher_psnr": 30.0,
               "served_psnr": 30.0 - teacher, "student_ref_psnr": 28.0, "student_psnr": 28.0 - student,
               "channels": "answers", "student_shortcut": False, "queries_used": 16,
               "teacher_drop_db_per_image": [teacher, 2 * teacher]}
    if budget is not None:
        metrics.update(strength_param="sigma", strength=params.get("sigma", 0.01), calib_drop_db=budget)
    return {"key": key, "task": "derain", "defense": defense, "attack": "vanilla_kd", "seed": seed,
            "profile": "smoke", "status": "done", "error": None, "metrics": metrics, "budget": budget,
            "config": {"task": {"name": "derain", "version": "1", "params": {}},
                       "defense": {"name": defense, "version": "1", "params": params},
                       "attack": {"name": "vanilla_kd", "version": "1", "params": {}},
                       "seed": seed, "teacher_seed": teacher_seed, "budget_db": budget, "profile": {"crop": 24}}}


PAIRS = [(t, s) for t in (0, 1) for s in range(4)]


@pytest.fixture(scope="module")
def verdict_report(tmp_path_factory):
    """output_noise at 3 strengths (costs 0.2/0.6/1.4 dB, drops scaled per pair), a mad curve that never reaches
    0.5 dB, a noise floor, and output_noise calibrated to 0.1 dB on calib that cost 0.3 dB on test."""
    root = tmp_path_factory.mktemp("verdict")
    store = Store(root / "s")
    for i, (t, s) in enumerate(PAIRS):
        scale = 1 + 0.1 * i  # each pair's curve: drops 0.5, 1.3, 2.0 times its scale
        for sigma, cost, drop in ((0.01, 0.2, 0.5), (0.02, 0.6, 1.3), (0.04, 1.4, 2.0)):
            store.put_cell(_cell(f"o{sigma}-{t}-{s}", "output_noise", {"sigma": sigma}, s, t, teacher=cost,
                                 student=drop * scale))
        for eps, cost, drop in ((0.01, 0.05, 0.1), (0.02, 0.3, 0.2)):
            store.put_cell(_cell(f"m{eps}-{t}-{s}", "mad", {"eps": eps}, s, t, teacher=cost, student=drop))
        store.put_cell(_cell(f"f-{t}-{s}", "noise_floor", {}, s, t, teacher=0.001, student=0.01 * (-1) ** i))
        store.put_cell(_cell(f"c-{t}-{s}", "output_noise", {"sigma": 0.008}, s, t, teacher=0.3, student=0.4,
                             budget=0.1))
    return build_report(root / "s", root / "out", ("md", "latex", "csv"), progress=False)


def test_matched_cost_rows_interpolate_each_seed_pairs_curve(verdict_report):
    (table,) = verdict_report.tables
    at = {(r.group, r.defense_base): r for r in table.rows}
    noise = at[("matched test cost 0.5 dB", "output_noise")]
    # each pair's curve, from its identity point (sigma 0: cost 0, drop 0), is monotone: read by PCHIP through
    # (0, 0), (0.2, 0.5), (0.6, 1.3), (1.4, 2.0) times the pair's scale (drops measured from the mean of the
    # reference and the floor student shift a pair's whole curve, its identity point included, by the same
    # amount, +-0.005 here, which cancels over the pairs)
    from scipy.interpolate import PchipInterpolator

    curve = PchipInterpolator([0.0, 0.2, 0.6, 1.4], [0.0, 0.5, 1.3, 2.0])
    scale = sum(1 + 0.1 * i for i in range(len(PAIRS))) / len(PAIRS)
    assert noise.student.mean == pytest.approx(scale * float(curve(0.5)))
    assert float(curve(0.5)) != pytest.approx(1.1)  # not the chord's 0.5 + 0.75 * 0.8
    assert noise.matched_cost == 0.5 and len(noise.pairs) == 8 and noise.seeds == [0, 1, 2, 3]
    low = at[("matched test cost 0.1 dB", "output_noise")]
    assert low.student.mean == pytest.approx(scale * float(curve(0.1)))
    mad = at[("matched test cost 0.5 dB", "mad")]
    assert mad.student.n == 0 and mad.rank is None and "~" in mad.flags  # never extrapolated
    md = (verdict_report.out / "leaderboard.md").read_text()
    assert "not reached" in md and "reaches 0.5 dB of test cost on none of its seed pairs" in md.replace("\\", "")
    # issue 29 item 4: every pair kept, the short ones at their nearest point (mad stays below 0.5 dB: its 0.3 dB
    # point, drop 0.2, is a lower bound)
    bound = "Every pair counted at its costliest point: at least 0.20 ± 0.01 dB (a bound, not an estimate; 4 student"
    assert bound in md.replace("\\", "")


def test_every_group_has_the_noise_floor_and_significance_against_it(verdict_report):
    (table,) = verdict_report.tables
    groups = table.groups()
    assert [name for name, _ in groups] == ["matched test cost 0.1 dB", "matched test cost 0.5 dB",
                                            "matched test cost 1 dB", "calibrated to 0.1 dB on calib",
                                            "as run (each at its set strength)"]
    for _, rows in groups:
        assert rows[0].floor and rows[0].defense == "noise floor" and rows[0].rank is None
    noise = next(r for r in table.rows if r.group == "matched test cost 1 dB" and r.defense_base == "output_noise")
    assert noise.above_floor and noise.p_floor < 0.05 and noise.rank == 1 and noise.top
    md = (verdict_report.out / "leaderboard.md").read_text()
    assert "above p=" in md and "Holm" in md and "8 (4×2)" in md
    assert "2 teacher seed(s) (0, 1)" in md


def test_a_calibrated_row_whose_test_cost_departs_from_its_budget_is_flagged(verdict_report):
    (table,) = verdict_report.tables
    (calibrated,) = [r for r in table.rows if r.group.startswith("calibrated") and not r.floor]
    assert "!" in calibrated.flags and calibrated.teacher.mean == pytest.approx(0.3)
    md = (verdict_report.out / "leaderboard.md").read_text()
    assert "the budget set on calib did not hold on test" in md


def test_cells_csv_has_per_image_teacher_costs(verdict_report):
    import csv

    rows = list(csv.DictReader((verdict_report.out / "cells.csv").open()))
    row = next(r for r in rows if r["defense"] == "output_noise" and r["budget_db"] == "")
    assert json.loads(row["teacher_drop_db_per_image"]) == [float(row["teacher_drop_db"]),
                                                           2 * float(row["teacher_drop_db"])]
    assert math.isclose(float(row["worst_teacher_drop_db"]), 2 * float(row["teacher_drop_db"]))
    assert {r["teacher_seed"] for r in rows} == {"0", "1"}


# ------------------------------------------------------------------------------------------ the calib pool
def test_calib_pool_can_hold_the_owners_photos_with_draws_of_their_own():
    plain = resolve(CellSpec(task="derain", profile="smoke")).task.splits()
    wide = resolve(CellSpec(task="derain", profile="smoke",
                            profile_params={"calib_pool": "calib+owner", "calib_draws": 2})).task.splits()
    wide.check_disjoint()  # owner and calib may share photographs; test and attacker never
    assert set(wide.calib.sources) == set(plain.calib.sources) | set(plain.owner.sources)
    assert len(wide.calib) == 2 * len(set(wide.calib.sources))
    # the owner's photographs enter calib with degradations of their own, never the owner pool's images
    owner = {t.numpy().tobytes() for t in plain.owner.degraded}
    assert not any(t.numpy().tobytes() in owner for t in wide.calib.degraded)
    # the other pools are untouched, so teachers, students and scores stay what they were
    for name in ("owner", "attacker", "test"):
        assert all(torch.equal(a, b) for a, b in zip(plain[name].degraded, wide[name].degraded))
    with pytest.raises(BenchError, match="calib_pool"):
        resolve(CellSpec(task="derain", profile="smoke", profile_params={"calib_pool": "test"}))


def test_only_budgeted_cells_are_keyed_by_the_calib_pool():
    def key(budget, **params):
        return resolve(CellSpec(task="derain", defense="output_noise", profile="smoke", budget_db=budget,
                                profile_params=params)).key

    assert key(None) == key(None, calib_pool="calib+owner", calib_draws=4)
    assert key(0.5) != key(0.5, calib_pool="calib+owner")


def test_each_defense_is_judged_by_its_worst_case_over_attacks(tmp_path):
    """Issue 29 item 6: the worst case is the best undefended student over all attacks minus the best defended
    student over all attacks, per seed pair. Three attacks: feature_kd's students are the best undefended
    (28.5); an output filter costs the thief 2.8 dB undefended (25.2), so its own small 'drop' against its own
    reference must not make it look like the strongest attack."""
    store = Store(tmp_path / "s")
    for attack, ref, drops in (("vanilla_kd", 28.0, {"mad": 1.0, "output_noise": 0.2}),
                               ("feature_kd", 28.5, {"mad": 0.3, "output_noise": 0.9}),
                               ("finetune", 25.2, {"mad": 0.05, "output_noise": 0.05})):
        for t, s in PAIRS:
            for defense, drop in drops.items():
                jitter = 0.01 * ((7 * s + 3 * t + len(defense) + len(attack)) % 5)
                cell = _cell(f"{attack}-{defense}-{t}-{s}", defense, {}, s, t, teacher=0.5, student=drop + jitter)
                cell["attack"] = attack
                cell["config"]["attack"]["name"] = attack
                cell["metrics"]["student_ref_psnr"] = ref
                cell["metrics"]["student_psnr"] = ref - drop - jitter
                store.put_cell(cell)
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md",), progress=False)
    (view,) = [t for t in rep.tables if t.derived]
    rows = {r.defense: r for r in view.rows}
    # mad: defended 27.0 (vanilla), 28.2 (feature), 25.15 (finetune): best 28.2; worst case 28.5 - 28.2 = 0.3
    # output_noise: 27.8 (vanilla), 27.6 (feature), 25.15: best 27.8; worst case 28.5 - 27.8 = 0.7, not the 0.2
    # it loses against vanilla_kd's own reference, nor finetune's 0.05
    assert set(rows) == {"mad · best thief: feature_kd", "output_noise · best thief: vanilla_kd"}
    jit = {a: [0.01 * ((7 * s + 3 * t + d + len(a)) % 5) for t, s in PAIRS]
           for a, d in (("feature_kd", 3), ("vanilla_kd", 12))}
    assert rows["mad · best thief: feature_kd"].student.mean == pytest.approx(0.3 + np.mean(jit["feature_kd"]))
    assert rows["output_noise · best thief: vanilla_kd"].student.mean == pytest.approx(
        0.5 + 0.2 + np.mean(jit["vanilla_kd"]))
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "worst case over attacks" in md and "best undefended student over all attacks" in md


def test_a_pair_short_of_a_matched_cost_says_which_side_it_missed():
    """A pair with no value at a matched cost either stays below it or, for a curve without a zero-cost point
    (a nasty teacher is retrained, so even its mildest strength costs something), lies above it at every
    strength; the note must not call the latter "reaching only" its highest cost."""
    from reports.leaderboard import _why_short

    assert _why_short([(0.2, 0.5), (0.3, 0.55)], 1.0, "they") == "they reach only 0.50–0.55 dB"
    above = _why_short([(0.26, 0.97), (0.3, 0.96)], 0.1, "the others")
    assert above == "the others cost more than that at every strength, 0.26–0.30 dB at the least"
    both = _why_short([(0.0, 0.5), (0.26, 0.97)], 0.1, "the others")
    assert "reach only 0.50 dB" in both and "0.26 dB at the least" in both
