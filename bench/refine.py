"""Strength sweeps that refine themselves (``bench sweep GRID --refine N``).

A trade-off curve read at a matched teacher cost across a wide bracket (two strengths whose test costs lie
far apart around the cost, :func:`reports.matched.wide_gap`) is read off a guess between them. After a sweep,
:func:`proposals` looks at every defense family of the grid (a defense with every parameter but its strength
fixed, on one task, attack and profile), at every seed pair and matched cost, and proposes the midpoint
strength of each wide bracket (:func:`reports.matched.refinement`). The new strengths run for every seed pair
of the family (a strength is a column of the grid, not one pair's), one round at a time, at most ``per_round``
new strengths per family, until no bracket is wide or the rounds are spent. Strengths are rounded to 4
significant digits, so that two pairs proposing nearly the same midpoint run one strength.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bench.cache import canonical_json
from bench.pipeline import CellSpec
from bench.registry import DEFENSES

#: most strengths added to one family in one round
PER_ROUND = 2


def _family(spec: CellSpec, strength: str) -> str:
    """What identifies a spec's curve: everything but the defense's strength and the seeds."""
    params = {k: v for k, v in spec.defense_params.items() if k != strength}
    fields = dataclasses.asdict(dataclasses.replace(spec, defense_params=params, seed=0, teacher_seed=0))
    return canonical_json(fields)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def proposals(result: Any, *, per_round: int = PER_ROUND) -> list[CellSpec]:
    """The cells one refinement round adds to a sweep (:class:`bench.scheduler.SweepResult`: its specs by key
    and the store's rows)."""
    from reports.leaderboard import MATCHED_COSTS, _identity
    from reports.matched import refinement

    by_key = {r["key"]: r for r in result.rows if r.get("status") == "done"}
    families: dict[str, list[tuple[CellSpec, dict[str, Any]]]] = {}
    for key, spec in result.specs.items():
        strength = DEFENSES.get(spec.defense).strength
        if not strength or spec.budget_db is not None or strength not in spec.defense_params or key not in by_key:
            continue
        families.setdefault(_family(spec, strength), []).append((spec, by_key[key]))
    out: list[CellSpec] = []
    for members in families.values():
        name = members[0][0].defense
        strength = DEFENSES.get(name).strength
        have = {_round(float(s.defense_params[strength])) for s, _ in members}
        identity = _identity(name)
        anchor = None if identity is None else (identity, 0.0, 0.0)
        curves: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
        for spec, row in members:
            m = row.get("metrics") or {}
            curves.setdefault((spec.teacher_seed, spec.seed), []).append(
                (float(spec.defense_params[strength]), float(m.get("teacher_drop_db", math.nan)),
                 float(m.get("student_drop_db", math.nan))))
        wanted: dict[float, int] = {}
        for points in curves.values():
            for cost in MATCHED_COSTS:
                s = refinement(points, cost, anchor=anchor)
                if s is not None and _round(s) not in have:
                    wanted[_round(s)] = wanted.get(_round(s), 0) + 1
        chosen = sorted(sorted(wanted, key=lambda s: -wanted[s])[:per_round])
        templates = {(s.teacher_seed, s.seed): s for s, _ in members}
        for value in chosen:
            for spec in templates.values():
                out.append(dataclasses.replace(spec, defense_params={**spec.defense_params, strength: value}))
    return out
