"""Matched-cost reading of trade-off curves, paired tests, Holm's correction and table verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from reports.matched import Matched, at_cost
from reports.significance import METHOD_TEXT, crossed_test, holm, minimum_detectable_effect, paired_test, verdicts
from reports.stats import mean_ci, unit_ci

CURVE = [(1.0, 0.2, 0.5), (2.0, 0.6, 1.3), (3.0, 1.4, 2.0)]


# -- at_cost -------------------------------------------------------------------------------------


def test_at_cost_interpolates_on_the_bracketing_segment():
    m = at_cost(CURVE, 0.5)
    # 0.5 + (0.5 - 0.2) / (0.6 - 0.2) * (1.3 - 0.5) = 1.1
    assert m.value == pytest.approx(1.1, abs=1e-12)
    assert m.reason is None
    assert m.bracket == (1.0, 2.0)
    assert m.monotone is True


def test_at_cost_order_of_points_does_not_matter():
    assert at_cost(list(reversed(CURVE)), 1.0) == at_cost(CURVE, 1.0)
    # 1.3 + (1.0 - 0.6) / (1.4 - 0.6) * (2.0 - 1.3) = 1.65
    assert at_cost(CURVE, 1.0).value == pytest.approx(1.65, abs=1e-12)
    assert at_cost(CURVE, 1.0).bracket == (2.0, 3.0)


def test_at_cost_point_exactly_at_the_cost_counts():
    m = at_cost(CURVE, 0.6)
    assert m.value == 1.3
    assert m.bracket == (1.0, 2.0)  # the first segment that reaches it
    assert at_cost(CURVE, 0.2).value == 0.5
    assert at_cost(CURVE, 1.4).value == 2.0


def test_at_cost_anchor_extends_the_curve_down_to_zero():
    m = at_cost(CURVE, 0.1, anchor=(0.0, 0.0, 0.0))
    # 0 + (0.1 - 0) / (0.2 - 0) * (0.5 - 0) = 0.25
    assert m.value == pytest.approx(0.25, abs=1e-12)
    assert m.bracket == (0.0, 1.0)


def test_at_cost_measured_point_wins_over_the_anchor():
    points = [(0.0, 0.1, 0.4), *CURVE]
    with_anchor = at_cost(points, 0.15, anchor=(0.0, 0.0, 0.0))
    assert with_anchor == at_cost(points, 0.15)
    # 0.4 + (0.15 - 0.1) / (0.2 - 0.1) * (0.5 - 0.4) = 0.45
    assert with_anchor.value == pytest.approx(0.45, abs=1e-12)


def test_at_cost_never_extrapolates():
    below = at_cost(CURVE, 0.1)
    assert below == Matched(None, "starts at 0.20 dB", True, None)
    above = at_cost(CURVE, 2.0)
    assert above == Matched(None, "reaches only 1.40 dB", True, None)
    assert at_cost(CURVE, 2.0, anchor=(0.0, 0.0, 0.0)).reason == "reaches only 1.40 dB"


def test_at_cost_too_few_points_and_non_finite_points():
    assert at_cost([(1.0, 0.5, 1.0)], 0.5).reason == "fewer than 2 points"
    assert at_cost([], 0.5).value is None
    assert at_cost([(1.0, 0.5, 1.0), (2.0, math.nan, 1.0)], 0.5).reason == "fewer than 2 points"
    # the anchor counts as a point
    assert at_cost([(1.0, 0.2, 0.5)], 0.1, anchor=(0.0, 0.0, 0.0)).value == pytest.approx(0.25)
    noisy = [*CURVE, (4.0, math.inf, 3.0), (1.5, 0.4, math.nan)]
    assert at_cost(noisy, 0.5) == at_cost(CURVE, 0.5)


def test_at_cost_non_monotone_uses_the_first_crossing():
    points = [(1.0, 0.2, 0.1), (2.0, 0.9, 0.8), (3.0, 0.4, 1.5), (4.0, 1.2, 2.0)]
    m = at_cost(points, 0.5)
    assert m.monotone is False
    assert m.bracket == (1.0, 2.0)
    # 0.1 + (0.5 - 0.2) / (0.9 - 0.2) * (0.8 - 0.1) = 0.4
    assert m.value == pytest.approx(0.4, abs=1e-12)
    # a cost only reached by the falling segment after the peak is still read on the first crossing
    assert at_cost(points, 0.9).bracket == (1.0, 2.0)
    # monotone is reported even when the cost is out of reach
    assert at_cost(points, 5.0).monotone is False


def test_at_cost_flat_segment_at_the_cost_takes_its_first_point():
    points = [(1.0, 0.5, 1.0), (2.0, 0.5, 2.0), (3.0, 0.8, 3.0)]
    m = at_cost(points, 0.5)
    assert m.value == 1.0 and m.bracket == (1.0, 2.0) and m.monotone


def test_at_cost_rejects_a_non_finite_cost():
    with pytest.raises(ValueError):
        at_cost(CURVE, math.nan)


# -- holm ----------------------------------------------------------------------------------------


def test_holm_matches_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan_out_of_m():
    out = holm([0.01, math.nan, 0.04, 0.6])
    assert math.isnan(out[1])
    # m = 3: 0.01*3 = 0.03, 0.04*2 = 0.08, min(1, 0.6*1) = 0.6
    assert [out[0], out[2], out[3]] == pytest.approx([0.03, 0.08, 0.6])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    assert math.isnan(holm([math.nan])[0])


# -- paired_test ---------------------------------------------------------------------------------


def test_paired_test_matches_a_hand_computed_t():
    a = {("t0", "s0"): 1.0, ("t0", "s1"): 2.0, ("t1", "s0"): 3.0}
    b = {k: 0.0 for k in a}
    r = paired_test(a, b)
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3)
    t = 2.0 / (1.0 / math.sqrt(3.0))
    assert r.n == 3
    assert r.mean_diff == pytest.approx(2.0)
    assert r.statistic == pytest.approx(t)
    assert r.p == pytest.approx(2 * stats.t.sf(t, 2))
    assert r.p == pytest.approx(0.0742, abs=1e-4)
    flipped = paired_test(b, a)
    assert flipped.statistic == pytest.approx(-t) and flipped.p == pytest.approx(r.p)


def test_paired_test_pairs_by_key():
    a = {1: 1.0, 2: 2.0, 3: 3.0, 4: 10.0}
    b = {3: 0.0, 1: 0.0, 2: 0.0, 5: 7.0}  # other order; 4 and 5 have no partner
    shuffled = {2: 2.0, 4: 10.0, 3: 3.0, 1: 1.0}
    assert paired_test(a, b) == paired_test(shuffled, b)
    r = paired_test(a, b)
    assert r.n == 3 and r.mean_diff == pytest.approx(2.0)
    # a non-finite value drops its pair too
    r2 = paired_test({**a, 3: math.nan}, b)
    assert r2.n == 2 and r2.mean_diff == pytest.approx(1.5)


def test_paired_test_too_few_pairs():
    r = paired_test({1: 1.0}, {1: 0.5})
    assert r.n == 1 and r.mean_diff == 0.5 and math.isnan(r.p) and math.isnan(r.statistic)
    r0 = paired_test({1: 1.0}, {2: 0.5})
    assert r0.n == 0 and math.isnan(r0.mean_diff) and math.isnan(r0.p)


def test_paired_test_zero_variance():
    same_shift = paired_test({1: 1.0, 2: 2.0, 3: 3.0}, {1: 0.5, 2: 1.5, 3: 2.5})
    assert same_shift.p == 0.0 and same_shift.statistic == math.inf
    down = paired_test({1: 0.5, 2: 1.5}, {1: 1.0, 2: 2.0})
    assert down.p == 0.0 and down.statistic == -math.inf
    equal = paired_test({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0})
    assert equal.p == 1.0 and equal.statistic == 0.0 and equal.mean_diff == 0.0


# -- verdicts ------------------------------------------------------------------------------------

PAIRS = [(t, s) for t in range(2) for s in range(3)]


def _row(values):
    return dict(zip(PAIRS, values))


FLOOR = _row([0.02, -0.01, 0.03, 0.00, -0.02, 0.01])
STRONG = _row([1.05, 0.98, 1.10, 1.02, 0.95, 1.01])  # clearly above the floor
NOISE_B = _row([0.03, -0.02, 0.01, 0.02, -0.01, 0.00])  # the floor within noise
NOISE_C = _row([0.01, 0.00, 0.04, -0.01, 0.00, 0.02])  # the floor within noise


def test_verdicts_ranks_share_when_inseparable():
    group = [("none", FLOOR), ("strong", STRONG), ("b", NOISE_B), ("c", NOISE_C)]
    v = verdicts([group], floor="none")
    assert set(v) == {(0, "none"), (0, "strong"), (0, "b"), (0, "c")}
    assert v[(0, "strong")].rank == 1
    assert v[(0, "b")].rank == v[(0, "c")].rank == 2
    assert v[(0, "none")].rank is None
    assert v[(0, "strong")].above_floor is True and v[(0, "strong")].p_floor < 0.05
    assert v[(0, "b")].above_floor is False and v[(0, "c")].above_floor is False
    # the top row: not separable from itself; the others are separable from it
    assert math.isnan(v[(0, "strong")].p_top) and v[(0, "strong")].separable_from_top is False
    assert v[(0, "b")].separable_from_top and v[(0, "c")].separable_from_top
    # the floor row's p_top is the top row's p_floor
    assert v[(0, "none")].p_top == v[(0, "strong")].p_floor
    assert math.isnan(v[(0, "none")].p_floor) and v[(0, "none")].above_floor is False
    assert v[(0, "b")].key == "b"


def test_verdicts_p_values_are_holm_adjusted_over_the_table():
    group = [("none", FLOOR), ("strong", STRONG), ("b", NOISE_B), ("c", NOISE_C)]
    rows = dict(group)
    order = [("strong", "b"), ("strong", "none"), ("strong", "c"), ("b", "c"), ("b", "none"), ("c", "none")]
    raw = [crossed_test(rows[i], rows[j]).p for i, j in order]
    adj = dict(zip(order, holm(raw)))
    v = verdicts([group], floor="none")
    assert v[(0, "c")].p_floor == pytest.approx(adj[("c", "none")])
    assert v[(0, "b")].p_top == pytest.approx(adj[("strong", "b")])
    assert v[(0, "strong")].p_floor == pytest.approx(adj[("strong", "none")])


def test_verdicts_holm_family_spans_all_groups():
    floor = {k: 0.0 for k in range(4)}
    defense = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}  # t = 3.873 on 3 df: p = 0.0305
    raw = paired_test(defense, floor).p
    assert 0.025 < raw < 0.05
    group = [("none", floor), ("d", defense)]

    alone = verdicts([group], floor="none")
    assert alone[(0, "d")].p_floor == pytest.approx(raw)
    assert alone[(0, "d")].above_floor is True

    doubled = verdicts([group, group], floor="none")
    for g in (0, 1):
        assert doubled[(g, "d")].p_floor == pytest.approx(2 * raw)
        assert doubled[(g, "d")].above_floor is False


def test_verdicts_above_floor_needs_a_higher_mean():
    floor = {k: 1.0 + 0.1 * k for k in range(4)}
    below = {k: 0.0 + 0.01 * k for k in range(4)}  # significantly BELOW the floor
    v = verdicts([[("none", floor), ("d", below)]], floor="none")
    assert v[(0, "d")].p_floor < 0.05
    assert v[(0, "d")].above_floor is False


def test_verdicts_tied_means_share_a_rank_and_untestable_rows_stay_out_of_the_family():
    floor = {k: 0.0 for k in range(4)}
    defense = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
    twin = dict(defense)
    lonely = {0: 9.0}  # one value: its tests have no p and do not count in m
    group = [("none", floor), ("d", defense), ("twin", twin), ("lonely", lonely)]
    v = verdicts([group], floor="none")
    # family: d-twin (p = 1), d-none, twin-none (p = 0.0305 each); the lonely row's tests are not counted
    raw = paired_test(defense, floor).p
    assert v[(0, "d")].p_floor == pytest.approx(holm([1.0, raw, raw])[1])
    assert v[(0, "d")].rank == v[(0, "twin")].rank == 1
    assert v[(0, "lonely")].rank == 1  # nothing is significantly better than it
    assert math.isnan(v[(0, "lonely")].p_floor) and v[(0, "lonely")].above_floor is False
    # the lonely row has the highest mean, so it is the top; nobody can be separated from it
    assert math.isnan(v[(0, "d")].p_top) and v[(0, "d")].separable_from_top is False


def test_verdicts_without_a_floor_row():
    v = verdicts([[("strong", STRONG), ("b", NOISE_B)]], floor="none")
    assert v[(0, "strong")].rank == 1 and v[(0, "b")].rank == 2
    assert math.isnan(v[(0, "b")].p_floor) and v[(0, "b")].above_floor is False
    assert v[(0, "b")].separable_from_top is True
    v2 = verdicts([[("strong", STRONG), ("b", NOISE_B)]], floor=None)
    assert {k: (x.rank, x.above_floor, x.separable_from_top) for k, x in v2.items()} == {
        k: (x.rank, x.above_floor, x.separable_from_top) for k, x in v.items()
    }


def test_verdicts_rejects_duplicate_row_keys():
    with pytest.raises(ValueError):
        verdicts([[("a", STRONG), ("a", NOISE_B)]], floor=None)


def test_method_text_names_the_test_and_the_correction():
    assert "student seeds" in METHOD_TEXT and "Holm" in METHOD_TEXT and "df = student seeds - 1" in METHOD_TEXT


# -- the crossed design ---------------------------------------------------------------------------
# A difference with a strong student-seed effect: student seed s adds EFFECT[s] under both teachers.
EFFECT = [0.9, 0.3, 0.4]
CROSSED = {(t, s): EFFECT[s] + (0.01 if t == 0 else -0.01) for t in range(2) for s in range(3)}
ZERO = {k: 0.0 for k in CROSSED}


def test_the_naive_test_rejects_a_student_seed_effect_the_crossed_test_does_not():
    naive = paired_test(CROSSED, ZERO)  # six pairs as if independent: df 5
    crossed = crossed_test(CROSSED, ZERO)  # three student seeds: df 2
    assert naive.n == 6 and naive.p < 0.05
    assert crossed.n == 3 and crossed.p > 0.05
    # by hand: unit means 0.9, 0.3, 0.4: mean 0.5333, SD 0.3215, t = 0.5333 / (0.3215 / sqrt 3) = 2.873 on 2 df
    assert crossed.statistic == pytest.approx(2.873, abs=2e-3)
    assert crossed.p == pytest.approx(2 * stats.t.sf(2.873, 2), abs=1e-3)
    assert crossed.mean_diff == pytest.approx(0.5333, abs=1e-4)
    v = verdicts([[("none", ZERO), ("d", CROSSED)]], floor="none")
    assert v[(0, "d")].above_floor is False  # the naive test would call it above the floor


def test_crossed_test_averages_over_the_teacher_seeds_a_student_seed_has():
    a = {(0, 0): 1.0, (1, 0): 3.0, (0, 1): 1.0, (0, 2): 2.0}  # student 0 has two teachers, 1 and 2 one
    b = {(0, 0): 0.0, (1, 0): 0.0, (0, 1): 0.0, (0, 2): 0.0, (1, 2): 5.0}  # (1, 2) missing from a: left out
    t = crossed_test(a, b)
    assert t.n == 3 and t.mean_diff == pytest.approx((2.0 + 1.0 + 2.0) / 3)


def test_unit_ci_is_the_interval_of_the_student_seed_means():
    e = unit_ci(CROSSED)
    assert e.n == 6 and e.units == 3
    by_hand = mean_ci([0.9, 0.3, 0.4])
    assert e.mean == pytest.approx(by_hand.mean) and e.ci == pytest.approx(by_hand.ci)


def test_minimum_detectable_effect_matches_a_hand_computation():
    floor = {(t, s): v for t in range(2) for s, v in enumerate([0.1, -0.2, 0.3, 0.0, -0.1])}
    mde, n = minimum_detectable_effect(floor)
    sd = np.std([0.1, -0.2, 0.3, 0.0, -0.1], ddof=1)  # each student seed's mean over its two teachers
    assert n == 5
    assert mde == pytest.approx((stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * sd / math.sqrt(5))
    assert mde == pytest.approx(3.71 * 0.1924 / 2.236, abs=0.01)  # 0.319 dB
    assert math.isnan(minimum_detectable_effect({(0, 0): 0.1})[0])


def test_verdicts_give_every_pairwise_adjusted_p():
    group = [("none", FLOOR), ("strong", STRONG), ("b", NOISE_B), ("c", NOISE_C)]
    v = verdicts([group], floor="none")
    assert set(v[(0, "strong")].p_vs) == {"b", "c"}
    assert v[(0, "strong")].p_vs["b"] == v[(0, "b")].p_vs["strong"] == v[(0, "b")].p_top


# -- curves fine enough to read (issue 29 item 5) -----------------------------------------------------------
def test_a_wide_bracket_gets_its_midpoint_strength_and_a_narrow_one_none():
    from reports.matched import refinement, wide_gap

    wide = [(1.05, 0.02, 0.1), (2.0, 1.2, 1.5)]
    assert wide_gap(0.1) == 0.1 and wide_gap(1.0) == 0.5
    assert refinement(wide, 0.1, anchor=(1.0, 0.0, 0.0)) == pytest.approx(math.sqrt(1.05 * 2.0))
    narrow = [(1.05, 0.06, 0.1), (1.1, 0.14, 0.3), (2.0, 1.2, 1.5)]
    assert refinement(narrow, 0.1) is None  # the crossing segment spans 0.08 dB
    assert refinement(narrow, 3.0) is None  # never reached: nothing to split


def test_a_monotone_curve_is_read_smoothly_and_within_its_bracket():
    curve = [(1.0, 0.0, 0.0), (1.2, 0.05, 0.6), (2.0, 1.0, 1.0), (3.0, 2.0, 1.2)]
    linear = at_cost(curve, 0.5)
    smooth = at_cost(curve, 0.5, smooth=True)
    assert linear.value == pytest.approx(0.6 + 0.45 / 0.95 * 0.4)
    assert smooth.value != pytest.approx(linear.value) and 0.6 <= smooth.value <= 1.0
    assert smooth.span == pytest.approx(0.95)
    bent = [(1.0, 0.0, 0.0), (1.5, 0.3, 0.5), (2.0, 0.2, 0.8)]  # not monotone: linear, first crossing
    assert at_cost(bent, 0.25, smooth=True).value == at_cost(bent, 0.25).value


def test_refinement_proposes_the_midpoint_for_every_seed_pair_of_the_family():
    from bench.pipeline import CellSpec
    from bench.refine import proposals
    from bench.scheduler import SweepResult

    specs, rows = {}, []
    for seed in (0, 1):
        for h, cost, drop in ((1.05, 0.02, 0.1), (2.0, 1.2, 1.5)):
            key = f"{seed}-{h}"
            specs[key] = CellSpec(task="derain", defense="asvp", seed=seed, profile="smoke", defense_params={"h": h})
            rows.append({"key": key, "status": "done", "metrics": {"teacher_drop_db": cost, "student_drop_db": drop}})
    result = SweepResult(rows=rows, ran=4, cached=0, failures={}, wall_s=0.0, labels={}, specs=specs)
    added = proposals(result)
    assert sorted((s.seed, s.defense_params["h"]) for s in added) == [(0, 1.449), (1, 1.449)]
    # a round that has run the midpoint (narrow brackets now near 0.1 dB) proposes what is still wide, not it again
    for seed in (0, 1):
        specs[f"{seed}-m"] = CellSpec(task="derain", defense="asvp", seed=seed, profile="smoke",
                                      defense_params={"h": 1.449})
        rows.append({"key": f"{seed}-m", "status": "done",
                     "metrics": {"teacher_drop_db": 0.15, "student_drop_db": 0.5}})
    again = {s.defense_params["h"] for s in proposals(result)}
    assert 1.449 not in again and again  # 1.05-1.449 spans 0.13 dB around 0.1; 1.449-2.0 spans 1.05 around 0.5, 1


def test_teacher_side_interval_is_over_teacher_seeds_not_student_seeds():
    """A teacher drop depends on the teacher seed alone: over student seeds every unit's mean is equal and the
    interval would be a misleading 0; over teacher seeds it is the teachers' spread."""
    from reports.stats import teacher_unit_of, unit_ci

    samples = {(t, s): [0.5, 1.0, 1.5][t] for t in range(3) for s in range(5)}
    assert unit_ci(samples).ci == pytest.approx(0.0)
    e = unit_ci(samples, unit=teacher_unit_of)
    assert e.mean == pytest.approx(1.0) and e.units == 3 and e.n == 15
    assert e.ci == pytest.approx(4.302652729911275 * 0.5 / math.sqrt(3))
