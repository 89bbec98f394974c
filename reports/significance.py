"""Which differences in a ranked table are real: tests that fit the crossed seed design, Holm's correction,
and what a table could have seen (its minimum detectable effect).

The design. Every (teacher seed, student seed) pair is a cell, but the pairs are not independent: a
student seed fixes the student's initialisation, its query crops and its data order under every teacher
(and the students of one teacher share it). Measured on claims grid v2: the student-seed variance
component of ASVP - floor exceeded the residual (underwater 0.152 against 0.081), and treating the ten
pairs as independent made six verdict cells "significant" that a test on student seeds does not support.

The test (:func:`crossed_test`, the primary one). Two rows of a table (two defenses, or a defense and the
noise floor) are compared on the pairs present in both with finite values: the difference of their
student drops is taken per pair, averaged over the teacher seeds of each student seed, and a one-sample
two-sided Student t-test on those per-student-seed means asks whether their mean is zero (df = student
seeds - 1). This is the conservative per-student-seed test: it treats the teacher seeds run as fixed (with
two or three teachers nothing generalises beyond them, and the tables say so) and the student seeds as the
independent units. Pairs missing from either row are left out, never imputed. With fewer than two units
there is no test (p is NaN, never significant). When every unit's difference is the same number the t
statistic is undefined (zero variance): p is 0 if that number is non-zero and 1 if it is zero. Keys that are
not (teacher seed, student seed) pairs are each their own unit, so the test is then the plain paired t-test
(:func:`paired_test`, kept for reference: the naive test that treats every pair as independent).

The family (:data:`FAMILY_TEXT`, the one definition that the leaderboard, the verdict and the README
use). One family is one ranked group of one table: one (profile, task, attack or worst case) at one matched
teacher cost (or one budget, or the as-run strengths): every pair of defense rows, plus every defense row
against the group's noise-floor row. The verdict's "ASVP against each prior defense" reads its p-values
from these families (:attr:`Verdict.p_vs`), never from a family of its own. Nothing is corrected across
costs, tasks or attacks: each is its own question. :func:`verdicts` corrects every group it is given
together; the leaderboard gives it one group at a time. Comparisons without a p-value (too few units) are
not counted in the family.

The correction. Holm's step-down method: with m p-values sorted ascending p(1) <= ... <= p(m), the
adjusted value of the j-th is the running maximum of min(1, (m - j + 1) * p(j)). This controls the
chance of any false "significant" claim in the table at alpha, without assuming independence. A
difference is called significant when its adjusted p is below alpha = 0.05.

The ranking. A row's mean is the mean of its finite student drops. Its rank is 1 plus the number
of other defense rows in its group whose mean is higher and whose difference from it is
significant. Rows that cannot be told apart therefore share a rank (so do rows with equal means),
and ranks need not be consecutive. The noise-floor row has no rank. A row is "above the floor" when
its difference from the floor row is significant and its mean is higher than the floor's; it is
"separable from the top" when its difference from the group's highest-mean row is significant.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

#: significance level for every verdict
ALPHA = 0.05

#: power at which the minimum detectable effect is stated
POWER = 0.80

#: one or two sentences that reports print verbatim under a table
METHOD_TEXT = (
    "Differences are tested on student seeds, the design's independent units (crossed design: a student seed "
    "fixes initialisation, query crops and data order under every teacher): each pair's difference is averaged "
    "over its teacher seeds, then a two-sided one-sample t-test on the per-student-seed means (df = student "
    "seeds - 1; the teacher seeds run are treated as fixed); p-values are adjusted with Holm's step-down method "
    "within one family, and a difference is significant when the adjusted p < 0.05."
)
#: what is corrected over what, the same words in the leaderboard, the verdict and the README
FAMILY_TEXT = (
    "One Holm family per ranked group: one task, one attack (or the worst case over attacks), one matched "
    "teacher cost (or budget, or the as-run strengths): every pair of defenses there and every defense against "
    "the noise floor. Nothing is corrected across costs, tasks or attacks."
)


def _ok(v: Any) -> bool:
    if v is None:
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class PairedTest:
    #: number of pairs used (keys present in both with finite values)
    n: int
    #: mean of a - b over those pairs (nan if n == 0)
    mean_diff: float
    #: t statistic (nan when undefined)
    statistic: float
    #: two-sided p-value; nan when n < 2
    p: float


def paired_test(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> PairedTest:
    """Paired two-sided t-test of ``a - b`` over the keys present in both with finite values."""
    keys = [k for k in a if k in b and _ok(a[k]) and _ok(b[k])]
    n = len(keys)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan)
    x = np.array([float(a[k]) for k in keys])
    y = np.array([float(b[k]) for k in keys])
    d = x - y
    mean_diff = float(d.mean())
    if n < 2:
        return PairedTest(n, mean_diff, math.nan, math.nan)
    if np.all(d == d[0]):
        # Zero variance: scipy gives NaN here; the answer is clear-cut either way.
        if d[0] != 0:
            return PairedTest(n, mean_diff, math.copysign(math.inf, mean_diff), 0.0)
        return PairedTest(n, mean_diff, 0.0, 1.0)
    res = stats.ttest_rel(x, y, alternative="two-sided")
    return PairedTest(n, mean_diff, float(res.statistic), float(res.pvalue))


def crossed_test(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> PairedTest:
    """The primary test (module docstring): ``a - b`` on the keys present in both, averaged per student seed
    (:func:`reports.stats.unit_of`), then a one-sample two-sided t-test on the units' means. ``n`` is the
    number of units."""
    from reports.stats import unit_means

    keys = [k for k in a if k in b and _ok(a[k]) and _ok(b[k])]
    units = unit_means({k: float(a[k]) - float(b[k]) for k in keys})
    zero = {u: 0.0 for u in units}
    return paired_test(units, zero)


def minimum_detectable_effect(floor: Mapping[Hashable, float], *, alpha: float = ALPHA,
                              power: float = POWER) -> tuple[float, int]:
    """The smallest true difference of student drops that :func:`crossed_test` finds with probability
    ``power`` at (unadjusted) ``alpha``, from the noise floor's spread: (t(1 - alpha/2, df) + t(power, df)) *
    s / sqrt(n), with s the SD of the floor's per-student-seed mean drops and n the student seeds, df = n - 1.
    The floor's drop (reference student minus floor student) is a difference of two students' chaos, as a
    defense-vs-floor difference is (floor student minus defended student), so its spread is that of the test's
    differences. Returns (MDE in dB, n); NaN where fewer than two units. Holm's correction makes the effect
    needed larger still, so this is a lower bound on what a corrected table can see."""
    from reports.stats import unit_means

    means = np.array(list(unit_means(floor).values()), dtype=float)
    n = len(means)
    if n < 2:
        return math.nan, n
    df = n - 1
    factor = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)
    return float(factor * means.std(ddof=1) / math.sqrt(n)), n


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order; NaN stays NaN and is not counted."""
    p = [float(v) if v is not None else math.nan for v in pvalues]
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for j, i in enumerate(sorted(idx, key=lambda i: p[i])):  # j is 0-based: factor m - j
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class Verdict:
    key: Hashable
    #: 1 + number of rows in its group significantly better than it; None for the floor row
    rank: int | None
    #: Holm-adjusted p vs the floor row (nan if no floor / untestable / the floor row itself)
    p_floor: float
    #: p_floor < alpha and mean drop above the floor's mean drop
    above_floor: bool
    #: Holm-adjusted p vs the group's top row (highest mean; nan for the top itself)
    p_top: float
    #: p_top < alpha (the top row itself: False)
    separable_from_top: bool
    #: Holm-adjusted p against every other defense row of its group, by that row's key
    p_vs: Mapping[Hashable, float] = field(default_factory=dict)


def _mean(values: Mapping[Hashable, float]) -> float:
    """A row's mean as its estimate shows it: the mean of its student seeds' means."""
    from reports.stats import unit_means

    x = list(unit_means({k: float(v) for k, v in values.items() if _ok(v)}).values())
    return float(np.mean(x)) if x else math.nan


def verdicts(
    groups: Sequence[Sequence[tuple[Hashable, Mapping[Hashable, float]]]],
    *,
    floor: Hashable | None,
    alpha: float = ALPHA,
    test: Any = None,
) -> dict[tuple[int, Hashable], Verdict]:
    """Ranks and significance flags for every row of one table, with one Holm family for the table.

    ``groups`` are the table's ranked groups, each a list of ``(row key, {pair key: student drop})``;
    the row whose key equals ``floor`` is its group's noise-floor row. Returns ``{(group index, row
    key): Verdict}``. The top row of a group is its highest-mean defense row (the first on ties);
    the floor row's ``p_top`` is the top row's ``p_floor``. See the module docstring for the rules.
    ``test``: the two-row test (default :func:`crossed_test`).
    """
    test = test or crossed_test
    raw: list[float] = []
    where: list[tuple[int, Hashable, Hashable]] = []  # (group, row i, row j), j may be the floor
    layout = []
    for g, rows in enumerate(groups):
        keys = [k for k, _ in rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"group {g} has duplicate row keys")
        values = dict(rows)
        floor_key = floor if floor is not None and floor in values else None
        defenses = [k for k in keys if floor_key is None or k != floor_key]
        means = {k: _mean(values[k]) for k in keys}
        for ii, ki in enumerate(defenses):
            for kj in defenses[ii + 1 :]:
                raw.append(test(values[ki], values[kj]).p)
                where.append((g, ki, kj))
            if floor_key is not None:
                raw.append(test(values[ki], values[floor_key]).p)
                where.append((g, ki, floor_key))
        layout.append((defenses, floor_key, means))

    adjusted: dict[tuple[int, Hashable, Hashable], float] = {}
    for (g, ki, kj), p in zip(where, holm(raw)):
        adjusted[(g, ki, kj)] = adjusted[(g, kj, ki)] = p

    out: dict[tuple[int, Hashable], Verdict] = {}
    for g, (defenses, floor_key, means) in enumerate(layout):
        finite = [k for k in defenses if not math.isnan(means[k])]
        top = max(finite, key=lambda k: means[k]) if finite else None  # max keeps the first on ties
        for k in defenses:
            better = sum(1 for j in defenses if j != k and adjusted[(g, k, j)] < alpha and means[j] > means[k])
            p_floor = adjusted[(g, k, floor_key)] if floor_key is not None else math.nan
            above = bool(p_floor < alpha and means[k] > means[floor_key]) if floor_key is not None else False
            p_top = adjusted[(g, k, top)] if top is not None and k != top else math.nan
            p_vs = {j: adjusted[(g, k, j)] for j in defenses if j != k}
            out[(g, k)] = Verdict(k, 1 + better, p_floor, above, p_top, bool(p_top < alpha), p_vs)
        if floor_key is not None:
            p_top = adjusted[(g, floor_key, top)] if top is not None else math.nan
            out[(g, floor_key)] = Verdict(floor_key, None, math.nan, False, p_top, bool(p_top < alpha))
    return out
