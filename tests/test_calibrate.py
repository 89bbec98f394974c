"""Calibration to equal teacher cost: the search, landing on the budget on calib, the store, budgeted cells."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bench import BenchError
from bench.api import Defense
from bench.cache import Artifacts
from bench.calibrate import calibrate, find_strength
from bench.cli import main
from bench.pipeline import CellSpec, evaluate, fit_defense, get_teacher, resolve, run_cell
from bench.store import Store


# ------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("budget", [0.1, 0.5, 1.0, 3.0])
def test_find_strength_lands_within_tolerance_in_few_evaluations(budget):
    calls = []

    def cost(s):  # a noise-like cost: 10 log10(1 + (s / s0)^2), identity at 0
        calls.append(s)
        return 10 * math.log10(1 + (s / 0.013) ** 2)

    s, c, trace = find_strength(cost, budget, 0.0, 0.02, tol=0.01)
    assert abs(c - budget) <= 0.01 and abs(cost(s) - budget) <= 0.01
    assert 0.0 not in calls[:-1]  # the identity end is never evaluated
    assert len(trace) <= 8


def test_find_strength_reports_a_cost_that_saturates_below_the_budget():
    evaluations = []

    def cost(s):
        evaluations.append(s)
        return 0.3 * (1 - math.exp(-s))

    with pytest.raises(BenchError, match="saturated.*smaller budget or raise x's cap"):
        find_strength(cost, 0.5, 0.0, 1.0, what="defense 'x'", hint="raise x's cap")
    assert len(evaluations) <= 9


def first_crossing(cost, budget, lo, hi, n=200_000):
    """The lowest strength on a fine grid of [lo, hi] whose cost reaches ``budget``."""
    return next(lo + (hi - lo) * i / n for i in range(n + 1) if cost(lo + (hi - lo) * i / n) >= budget)


def never_beyond_the_first_crossing(s, trace, budget):
    return s <= min(x for x, c in trace if c >= budget)


@pytest.mark.parametrize("hi", [0.1, 0.25, 4.0])
def test_find_strength_keeps_the_first_crossing_of_a_non_monotone_cost(hi):
    from bench.calibrate import is_monotone

    def cost(s):  # up through the budget before pi/6, down below it, up again: crosses 0.5 three times
        return 0.8 * math.sin(3 * s) + 0.3 * s

    messages = []
    s, c, trace = find_strength(cost, 0.5, 0.0, hi, tol=0.01, on_nonmonotone=messages.append)
    assert abs(c - 0.5) <= 0.01 and c == cost(s)
    assert s < math.pi / 6 and abs(s - first_crossing(cost, 0.5, 0.0, 4.0)) < 0.01  # the first crossing
    assert never_beyond_the_first_crossing(s, trace, 0.5)
    # started at 4, the search evaluated the dip on its way down to the first crossing, and says so
    assert len(messages) == (0 if hi < 1 else 1) and is_monotone(trace, 0.01) == (hi < 1)


def test_find_strength_says_so_when_its_scan_sees_the_cost_fall():
    from bench.calibrate import is_monotone

    def cost(s):  # a bump that stays below the budget, a dip (scan points 0.5 -> 1), then a rise through it
        return 0.25 * math.sin(3 * s) + 0.25 * s

    messages = []
    s, c, trace = find_strength(cost, 0.5, 0.0, 0.5, tol=0.01, what="defense 'x'", on_nonmonotone=messages.append)
    assert [x for x, _ in trace[:3]] == [0.5, 1.0, 2.0] and trace[1][1] < trace[0][1] - 0.01  # the scan's dip
    assert abs(c - 0.5) <= 0.01 and abs(s - first_crossing(cost, 0.5, 0.0, 4.0)) < 0.01
    assert never_beyond_the_first_crossing(s, trace, 0.5)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith("defense 'x': teacher cost is not monotone in strength")
    assert "falls from 0.37 dB at 0.5 to 0.29 dB at 1;" in messages[0]
    assert f"kept the first crossing at {s:.4g}" in messages[0]
    assert not is_monotone(trace, 0.01)


def test_find_strength_finds_a_cost_that_is_negative_at_first_like_mad():
    from bench.calibrate import is_monotone

    measured = [(0.0, 0.0), (0.02, -0.51), (0.05, -0.40), (0.1, 0.20), (0.2, 1.5), (0.4, 4.0), (10.0, 50.0)]

    def cost(s):  # MAD on derain: below 0 at small strengths, then rising through the budget
        (s0, c0), (s1, c1) = next((a, b) for a, b in zip(measured, measured[1:]) if a[0] <= s <= b[0])
        return c0 + (c1 - c0) * (s - s0) / (s1 - s0)

    messages = []
    s, c, trace = find_strength(cost, 0.5, 0.0, 0.02, tol=0.01, on_nonmonotone=messages.append)
    assert abs(c - 0.5) <= 0.01 and abs(s - (0.1 + 0.1 * 0.3 / 1.3)) < 0.001
    assert never_beyond_the_first_crossing(s, trace, 0.5)
    # the evaluated costs rise, but from the identity's 0 they first fall to -0.51 dB
    assert is_monotone(trace, 0.01) and not is_monotone(trace, 0.01, identity=0.0)
    assert len(messages) == 1 and "from 0.00 dB at the identity 0 (taken as 0 dB) to -0.51 dB at 0.02" in messages[0]


def test_find_strength_never_keeps_a_point_beyond_the_first_crossing():
    def cost(s):  # 0.52 dB at the first guess 1, but a spike over the budget just below it
        return 0.52 * s + (2.0 if 0.9 < s < 0.99 else 0.0)

    messages = []
    s, c, trace = find_strength(cost, 0.5, 0.0, 1.0, tol=0.01, max_evals=3, on_nonmonotone=messages.append)
    assert trace[0] == (1.0, 0.52) and 0.9 < trace[1][0] < 0.99  # the spike, closer to the first crossing
    assert s < trace[1][0] and never_beyond_the_first_crossing(s, trace, 0.5)  # not 1.0, though 0.52 is closest
    assert len(messages) == 1


@pytest.mark.parametrize("budget", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("kind", ["noise", "flat then rising"])
def test_find_strength_is_silent_about_a_monotone_cost(budget, kind):
    from bench.calibrate import is_monotone

    def cost(s):  # noise-like, or nasty-teacher-like: nothing at first, then a rise
        return 10 * math.log10(1 + (s / 0.013) ** 2) if kind == "noise" else 40 * max(0.0, s - 0.05) ** 2

    messages = []
    s, c, trace = find_strength(cost, budget, 0.0, 0.02, tol=0.01, on_nonmonotone=messages.append)
    assert abs(c - budget) <= 0.01 and messages == []
    assert is_monotone(trace, 0.01) and is_monotone(trace, 0.01, identity=0.0)
    assert not is_monotone(trace + [(max(x for x, _ in trace) * 2, -1.0)], 0.01)  # and it can tell a fall


def test_is_monotone_forgives_a_fall_within_the_tolerance():
    from bench.calibrate import is_monotone

    noisy = [(0.4, 0.52), (0.1, 0.2), (0.2, 0.305), (0.3, 0.298)]  # any order; 0.305 -> 0.298 is noise
    assert is_monotone(noisy, 0.01) and not is_monotone(noisy, 0.005)
    assert is_monotone([(0.1, -0.005)], 0.01, identity=0.0) and not is_monotone([(0.1, -0.02)], 0.01, identity=0.0)
    assert is_monotone([(0.1, 0.3), (0.1, 0.2)], 0.01)  # one strength measured twice is no fall


# ----------------------------------------------------------------------------------- on the smoke task
@pytest.fixture(scope="module")
def teacher(shared_home):
    cell = resolve(CellSpec(task="derain", profile="smoke"))
    artifacts = Artifacts(shared_home)
    model, key, _ = get_teacher(cell.task, cell.profile, 0, artifacts, progress=False)
    return artifacts, model, key


@pytest.mark.parametrize("name, params", [("output_noise", {}), ("mad", {}), ("asvp", {"coherence": "false"}),
                                          ("output_noise", {"distribution": "uniform"})])
def test_calibration_lands_on_the_budget_on_calib_without_touching_test(teacher, tmp_path, name, params):
    artifacts, model, key = teacher
    budget = 0.5
    cell = resolve(CellSpec(task="derain", defense=name, profile="smoke", defense_params=params, budget_db=budget))
    splits = cell.task.splits()
    test_pool, splits.test = splits.test, None  # calibration must never look at the test split
    try:
        cal = calibrate(cell, model, key, artifacts, Store(tmp_path), progress=False)
    finally:
        splits.test = test_pool
    assert not cal.cached and abs(cal.achieved_db - budget) <= 0.02
    assert cal.value > type(cell.defense).strength_range[0]  # stronger than the identity (asvp: h > 1)
    # measured again, independently, at the stored strength
    trial = cell.defense.with_strength(cal.value, seed=0)
    fit_defense(dataclasses.replace(cell, defense=trial), model, key, artifacts, progress=False)
    with trial.serve(model) as served:
        cost = evaluate(model, splits.calib, cell.task)["psnr"] - evaluate(served, splits.calib, cell.task)["psnr"]
    assert abs(cost - budget) <= 0.05


def test_calibration_is_stored_reused_and_keyed_by_budget_and_defense(teacher, tmp_path):
    artifacts, model, key = teacher
    store = Store(tmp_path)

    def cal(budget, **params):
        cell = resolve(CellSpec(task="derain", defense="output_noise", profile="smoke", budget_db=budget,
                                defense_params=params))
        return calibrate(cell, model, key, artifacts, store, progress=False)

    first, again = cal(0.3), cal(0.3)
    assert again.cached and again.value == first.value and again.key == first.key
    assert store.get_calibration(first.key)["value"] == first.value
    other = cal(0.6)
    assert other.key != first.key and other.value > first.value
    assert cal(0.3, distribution="uniform").key != first.key


def test_budgeted_cell_runs_at_the_calibrated_strength(shared_home):
    spec = CellSpec(task="derain", defense="output_noise", profile="smoke", budget_db=0.4)
    row = run_cell(spec, home=shared_home, progress=False)
    m = row["metrics"]
    stored = Store(shared_home).get_calibration(m["calibration_key"])
    assert m["strength_param"] == "sigma" and m["strength"] == stored["value"]
    assert abs(m["calib_drop_db"] - 0.4) <= 0.02
    assert row["budget"] == 0.4 and row["config"]["budget_db"] == 0.4
    assert "sigma" not in row["config"]["defense"]["params"]  # the key holds the budget, not a strength
    assert resolve(dataclasses.replace(spec, budget_db=0.5)).key != resolve(spec).key
    from reports.cells import tidy  # the reports read the calibrated strength of a budgeted cell

    cells = tidy(Store(shared_home).dataframe()).set_index("key")
    assert cells.loc[row["key"], "strength"] == m["strength"] and cells.loc[row["key"], "budget_db"] == 0.4
    assert resolve(spec).key != resolve(dataclasses.replace(spec, budget_db=None)).key


@pytest.mark.parametrize("spec, words", [
    (dict(defense="none", budget_db=0.5), ["no strength parameter", "without --budget"]),
    (dict(defense="asvp", budget_db=0.5, defense_params={"mode": "exposed"}), ["touches no answers"]),
    (dict(defense="output_noise", budget_db=0.5, defense_params={"sigma": "0.1"}), ["defense.sigma"]),
    (dict(defense="output_noise", budget_db=0.0), ["positive"]),
    (dict(defense="output_noise", budget_db=float("nan")), ["positive"]),
])
def test_budgets_that_cannot_be_calibrated_fail_before_any_training(spec, words):
    with pytest.raises(BenchError) as err:
        resolve(CellSpec(task="derain", profile="smoke", **spec))
    for w in words:
        assert w in str(err.value)


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_calibrate_prints_and_stores_then_run_uses_it(capsys, shared_home):
    argv = ["--task", "derain", "--defense", "output_noise", "--profile", "smoke", "--home", str(shared_home),
            "--budget", "0.25"]
    assert main(["calibrate", *argv]) == 0
    out = capsys.readouterr().out
    assert "sigma = " in out and "budget 0.25 dB" in out and "on calib" in out
    assert main(["calibrate", *argv]) == 0
    assert "from the store" in capsys.readouterr().out
    assert main(["run", *argv]) == 0
    out = capsys.readouterr().out
    assert "budget 0.25 dB: sigma = " in out and "teacher_drop_db" in out


def test_cli_calibrate_needs_a_budget(capsys, tmp_path):
    code = main(["calibrate", "--task", "derain", "--defense", "output_noise", "--home", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--budget" in err and err.count("\n") == 1


# --------------------------------------------------------------------- plugins without a declared range
@dataclasses.dataclass(frozen=True)
class _GainParams:
    g: float = 1.0


@dataclasses.dataclass(frozen=True)
class _OffsetParams:
    b: float = 0.05


class _Gain(Defense):
    Params = _GainParams
    strength = "g"  # no cost at g = 1, not at 0: needs a strength_range, and declares none

    def channels(self):
        return ("answers",)

    def perturb_answers(self, answers, query):
        return answers * self.params.g


class _Offset(Defense):
    Params = _OffsetParams
    strength = "b"  # no cost at b = 0: the default bracket (0, default) is right

    def channels(self):
        return ("answers",)

    def perturb_answers(self, answers, query):
        return answers + self.params.b


@pytest.mark.parametrize("cls, ok", [(_Gain, False), (_Offset, True)])
def test_undeclared_strength_range_is_checked_before_use(teacher, tmp_path, cls, ok):
    from bench.registry import DEFENSES

    artifacts, model, key = teacher
    DEFENSES.register("t_strength")(cls)
    try:
        cell = resolve(CellSpec(task="derain", defense="t_strength", profile="smoke", budget_db=0.5))
        if ok:
            cal = calibrate(cell, model, key, artifacts, Store(tmp_path), progress=False)
            assert abs(cal.achieved_db - 0.5) <= 0.02 and cal.value > 0
        else:
            with pytest.raises(BenchError, match="strength_range"):
                calibrate(cell, model, key, artifacts, Store(tmp_path), progress=False)
    finally:
        DEFENSES.unregister("t_strength")
