"""Mean and 95 % confidence interval over seeds (Student t), the one statistic every report shows.

The half-width is ``t(0.975, n - 1) * s / sqrt(n)`` with ``s`` the sample standard deviation
(``ddof=1``): seeds are few (3 by default), so the normal quantile 1.96 would understate it (the t
quantile is 4.30 for n = 3). With one seed there is no interval: the half-width is None and the
report says so rather than printing zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    #: half-width of the 95 % interval; None with fewer than two values
    ci: float | None
    n: int
    #: independent units the interval rests on (student seeds, :func:`unit_ci`); None: every value is one
    units: int | None = None

    @property
    def low(self) -> float:
        return self.mean - (self.ci or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.ci or 0.0)


def mean_ci(values: Iterable[float], level: float = LEVEL) -> Estimate:
    """Mean and Student-t half-width of the finite values (NaNs, from failed metrics, are left out)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, None, 0)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, None, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, half, n)


def unit_of(key: Hashable) -> Hashable:
    """The independent unit of a sample key: the student seed of a (teacher seed, student seed) pair (the
    design is crossed: a student seed fixes the student's initialisation, query crops and data order under
    every teacher, so the pairs of one student seed are not independent); any other key is its own unit."""
    return key[1] if isinstance(key, tuple) and len(key) == 2 else key


def teacher_unit_of(key: Hashable) -> Hashable:
    """The unit of a teacher-side quantity (teacher drop, worst image, fidelity): the teacher seed of a (teacher
    seed, student seed) pair. Those quantities do not depend on the student seed, so the student seeds' means
    are all equal and an interval over them would be zero; their spread is the teacher seeds'."""
    return key[0] if isinstance(key, tuple) and len(key) == 2 else key


def unit_means(samples: Mapping[Hashable, float], unit: Callable[[Hashable], Hashable] = unit_of) -> dict[
        Hashable, float]:
    """The mean of each unit's finite values (a student seed's mean over the teacher seeds it has)."""
    grouped: dict[Hashable, list[float]] = {}
    for key, v in samples.items():
        if v is not None and math.isfinite(v):
            grouped.setdefault(unit(key), []).append(float(v))
    return {u: float(np.mean(vs)) for u, vs in grouped.items()}


def unit_ci(samples: Mapping[Hashable, float], level: float = LEVEL, *,
            unit: Callable[[Hashable], Hashable] = unit_of) -> Estimate:
    """Mean and Student-t interval over independent units (see :func:`unit_of`; teacher-side quantities:
    ``unit=teacher_unit_of``): the mean of the units' means, and the interval of those means (df = units - 1).
    ``n`` counts the values (pairs), ``units`` the units."""
    finite = [v for v in samples.values() if v is not None and math.isfinite(v)]
    means = list(unit_means(samples, unit).values())
    e = mean_ci(means, level)
    return Estimate(e.mean, e.ci, len(finite), len(means))
