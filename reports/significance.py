"""Which differences in a ranked table are real: paired tests with Holm's correction.

The test. Two rows of a table (two defenses, or a defense and the noise floor) are compared on the
same (teacher seed, student seed) pairs: for each pair present in both rows with a finite value in
both, the difference of student drops is taken, and a paired two-sided Student t-test asks whether
their mean is zero (``scipy.stats.ttest_rel``). Pairs missing from either row are left out, never
imputed. With fewer than two pairs there is no test (p is NaN, never significant). When every
difference is the same number the t statistic is undefined (zero variance): p is 0 if that number
is non-zero (the rows differ by exactly the same amount on every pair) and 1 if it is zero.

The family. Every comparison made for one table is one family: within each ranked group of the
table (e.g. one group per matched teacher cost), every pair of defense rows, plus every defense row
against the group's noise-floor row. All the p-values of all the groups are corrected together.
Comparisons without a p-value (too few pairs) are not counted in the family.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

#: significance level for every verdict
ALPHA = 0.05

#: one or two sentences that reports print verbatim under a table
METHOD_TEXT = (
    "Differences are tested with a paired two-sided t-test over (teacher seed, student seed) pairs "
    "(scipy.stats.ttest_rel); p-values are adjusted with Holm's step-down method over every comparison "
    "in the table, and a difference is significant when the adjusted p < 0.05."
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


def _mean(values: Mapping[Hashable, float]) -> float:
    x = [float(v) for v in values.values() if _ok(v)]
    return float(np.mean(x)) if x else math.nan


def verdicts(
    groups: Sequence[Sequence[tuple[Hashable, Mapping[Hashable, float]]]],
    *,
    floor: Hashable | None,
    alpha: float = ALPHA,
) -> dict[tuple[int, Hashable], Verdict]:
    """Ranks and significance flags for every row of one table, with one Holm family for the table.

    ``groups`` are the table's ranked groups, each a list of ``(row key, {pair key: student drop})``;
    the row whose key equals ``floor`` is its group's noise-floor row. Returns ``{(group index, row
    key): Verdict}``. The top row of a group is its highest-mean defense row (the first on ties);
    the floor row's ``p_top`` is the top row's ``p_floor``. See the module docstring for the rules.
    """
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
                raw.append(paired_test(values[ki], values[kj]).p)
                where.append((g, ki, kj))
            if floor_key is not None:
                raw.append(paired_test(values[ki], values[floor_key]).p)
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
            out[(g, k)] = Verdict(k, 1 + better, p_floor, above, p_top, bool(p_top < alpha))
        if floor_key is not None:
            p_top = adjusted[(g, floor_key, top)] if top is not None else math.nan
            out[(g, floor_key)] = Verdict(floor_key, None, math.nan, False, p_top, bool(p_top < alpha))
    return out
