"""Reading a defense's trade-off curve at a matched teacher cost.

A defense run at several strengths gives, for one (teacher seed, student seed) pair, one point per
strength: ``(strength, teacher_cost_db, student_drop_db)``, the teacher cost measured on the test
split. :func:`at_cost` reads the student drop at a chosen teacher cost (0.1, 0.5, 1.0 dB, ...) by
linear interpolation along the curve, in strength order. It never extrapolates: a curve that does
not reach the cost, or starts above it, gives no value and says why.

Rules, in order:

1. Points with a non-finite coordinate are dropped.
2. ``anchor`` (e.g. ``(identity_strength, 0.0, 0.0)``: at the identity strength cost and drop are
   exactly 0) is added when given, unless a (finite) measured point already has its strength, in
   which case the measured point wins and the anchor is dropped.
3. Points are sorted by strength (stable, so equal strengths keep their input order).
4. Consecutive segments are walked in strength order; the FIRST whose two teacher costs bracket
   the target (``c_i <= cost <= c_j`` or ``c_i >= cost >= c_j``) holds the crossing, and the drop
   is interpolated linearly in cost on it. A point exactly at the cost counts, so the first point
   of the curve that sits at the cost gives its drop exactly. A flat segment lying at the cost
   (``c_i == c_j == cost``) gives its first point's drop, the same rule.
5. On a non-monotone curve (cost going down somewhere as strength grows) the first crossing is
   still the one used; ``monotone`` reports the shape so a report can flag it.
6. ``smooth=True`` (what the leaderboard uses): where the whole curve's cost rises strictly with strength and
   it has three or more points, the drop is read off a monotone piecewise-cubic (PCHIP, Fritsch-Carlson)
   interpolant of drop against cost through every point instead of the chord of one segment, so a curve
   bent between two far-apart strengths is not read off a straight line. PCHIP never overshoots the data
   between two points, so it stays between the bracketing drops where they are monotone. Elsewhere: rule 4.
7. ``span`` is the bracketing segment's cost width: a reading across a segment wider than
   :func:`wide_gap` (or on a non-monotone curve) is marked by the report, and :func:`refinement` proposes
   the strength that splits it (``bench sweep --refine``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Matched:
    #: interpolated student drop (dB) at the cost; None where the curve does not reach it
    value: float | None
    #: why ``value`` is None, one short phrase ("reaches only 0.62 dB", "starts at 0.31 dB", ...)
    reason: str | None
    #: teacher cost non-decreasing with strength along the whole curve
    monotone: bool
    #: the two strengths whose segment held the crossing
    bracket: tuple[float, float] | None
    #: the teacher-cost width of that segment (dB); None where there is no crossing
    span: float | None = None


def _finite(point: Sequence[float]) -> bool:
    return len(point) == 3 and all(v is not None and math.isfinite(float(v)) for v in point)


def at_cost(
    points: Sequence[tuple[float, float, float]],
    cost: float,
    *,
    anchor: tuple[float, float, float] | None = None,
    smooth: bool = False,
) -> Matched:
    """The student drop at teacher cost ``cost`` by interpolation along the curve (see module doc)."""
    if cost is None or not math.isfinite(float(cost)):
        raise ValueError(f"cost must be finite, got {cost!r}")
    cost = float(cost)
    curve = [(float(s), float(c), float(d)) for s, c, d in (p for p in points if _finite(p))]
    if anchor is not None and _finite(anchor):
        a = (float(anchor[0]), float(anchor[1]), float(anchor[2]))
        if all(p[0] != a[0] for p in curve):
            curve.append(a)
    curve.sort(key=lambda p: p[0])

    costs = [p[1] for p in curve]
    monotone = all(c0 <= c1 for c0, c1 in zip(costs, costs[1:]))
    if len(curve) < 2:
        return Matched(None, "fewer than 2 points", monotone, None)

    for (s0, c0, d0), (s1, c1, d1) in zip(curve, curve[1:]):
        if (c0 <= cost <= c1) or (c0 >= cost >= c1):
            if c0 == c1 or cost == c0:
                value = d0
            elif cost == c1:
                value = d1
            else:
                value = d0 + (cost - c0) / (c1 - c0) * (d1 - d0)
            if smooth and len(curve) >= 3 and all(a < b for a, b in zip(costs, costs[1:])) and c0 != c1:
                from scipy.interpolate import PchipInterpolator

                value = float(PchipInterpolator(costs, [p[2] for p in curve])(cost))
            return Matched(value, None, monotone, (s0, s1), abs(c1 - c0))

    # No segment brackets the cost, so (the curve being a connected path) every cost is on one side.
    if max(costs) < cost:
        return Matched(None, f"reaches only {max(costs):.2f} dB", monotone, None)
    return Matched(None, f"starts at {min(costs):.2f} dB", monotone, None)


def wide_gap(cost: float) -> float:
    """The widest bracket (dB of teacher cost) a reading at ``cost`` may be taken across unmarked: 0.1 dB, or
    half the cost where that is more (0.1 dB at 0.1, 0.25 at 0.5, 0.5 at 1 dB)."""
    return max(0.1, 0.5 * float(cost))


def refinement(points: Sequence[tuple[float, float, float]], cost: float, *,
               anchor: tuple[float, float, float] | None = None) -> float | None:
    """The strength to add to one pair's curve so that its reading at ``cost`` is not taken across a wide
    bracket (:func:`wide_gap`): the midpoint of the bracketing strengths (geometric where both are positive),
    else None (no crossing, or a narrow one)."""
    m = at_cost(points, cost, anchor=anchor)
    if m.bracket is None or m.span is None or m.span <= wide_gap(cost):
        return None
    lo, hi = m.bracket
    return math.sqrt(lo * hi) if lo > 0 and hi > 0 else (lo + hi) / 2
