"""Query budgets: what the thief loses against how many queries it makes, per defense, beside the noise floor.

A grid sweeps the budget in one line (``attacks: [{name: vanilla_kd, sweep: {queries: [16, 64, 256]}}]``);
each budget is its own attack configuration, with its own reference student (the undefended teacher
distilled with the same queries), so every point's student drop is paired at its own budget. This module
finds such sweeps in a report's cells and draws them:

- a *budget family* is one (profile, task, attack with every parameter but ``queries`` fixed); it is drawn
  when the store holds it at two budgets or more;
- x is the number of queries the attack made (the row's ``queries_used``: a budget of 0 means the profile's
  default, and TTA averaging spends 8 queries per image), on a log axis;
- y is the student drop, mean over the (teacher seed, student seed) pairs with the 95 % interval over
  student seeds (:func:`reports.stats.unit_ci`: the design is crossed), one line per defense configuration;
- the noise floor (a second undefended student's drop at the same budget) is a grey band, per budget;
- where a defense declares it traces the theft (its rows carry ``trace_z``), a second panel draws the
  detection statistic against the budget, with the detector's threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reports.stats import Estimate, unit_ci

FLOOR = "noise_floor"


@dataclass
class BudgetFamily:
    """One budget sweep: per defense configuration, (queries, estimate) points sorted by queries."""

    profile: str
    task: str
    attack: str
    curves: dict[str, list[tuple[float, Estimate]]] = field(default_factory=dict)
    floor: list[tuple[float, Estimate]] = field(default_factory=list)
    #: per tracing defense configuration, (queries, estimate of trace_z) points
    traces: dict[str, list[tuple[float, Estimate]]] = field(default_factory=dict)


def _without_queries(params: Any) -> tuple[str, Any]:
    p = json.loads(params) if isinstance(params, str) else dict(params or {})
    budget = p.pop("queries", 0)
    return json.dumps(p, sort_keys=True), budget


def _label(attack: str, rest: str, varying: set[str]) -> str:
    """The attack's name with the parameters that differ between its families in the store (all others are
    its defaults or shared: naming them says nothing)."""
    params = json.loads(rest)
    inner = ", ".join(f"{k}={v}" for k, v in params.items() if k in varying)
    return f"{attack} ({inner})" if inner else attack


def _estimate(g: pd.DataFrame, column: str) -> Estimate:
    from reports.leaderboard import (
        pair_values,  # the leaderboard's (teacher seed, student seed) samples, one definition
    )

    return unit_ci(pair_values(g, column))


def budget_families(cells: pd.DataFrame) -> list[BudgetFamily]:
    """The budget sweeps of a report's cells (finished ones), each with two budgets or more."""
    if cells.empty or "attack_params" not in cells:
        return []
    done = cells[cells["status"] == "done"].copy()
    if done.empty:
        return []
    split = [_without_queries(p) for p in done["attack_params"]]
    done["_attack_rest"] = [s[0] for s in split]
    done["_budget"] = [s[1] for s in split]
    out = []
    for (profile, task, attack, rest), fam in done.groupby(["profile_label", "task_label", "attack", "_attack_rest"],
                                                            sort=True):
        if fam["_budget"].nunique() < 2:
            continue
        others = [json.loads(r) for r in set(done.loc[done["attack"] == attack, "_attack_rest"])]
        varying = {k for p in others for k in p if len({json.dumps(o.get(k)) for o in others}) > 1}
        family = BudgetFamily(profile=str(profile), task=str(task), attack=_label(str(attack), str(rest), varying))
        for (label, base), g in fam.groupby(["defense_label", "defense_base"], sort=True):
            if base == "none":
                continue  # its drop is zero by construction: the reference is its own student
            points, traces = [], []
            for _, at in g.groupby("_budget", sort=True):
                queries = float(at["queries_used"].median()) if at["queries_used"].notna().any() else math.nan
                points.append((queries, _estimate(at, "student_drop_db")))
                if "trace_z" in at and at["trace_z"].notna().any():
                    traces.append((queries, _estimate(at, "trace_z")))
            points.sort(key=lambda p: p[0])
            if base == FLOOR:
                family.floor = points
            else:
                family.curves[str(label)] = points
                if traces:
                    family.traces[str(label)] = sorted(traces, key=lambda p: p[0])
        if family.curves:
            out.append(family)
    return out


def budget_figure(family: BudgetFamily, title: str, *, trace_threshold: float | None = None) -> Any:
    """Student drop against queries (log x), one line per defense, the noise floor as a grey band per budget;
    a second panel of the trace statistic when some defense traces (``trace_threshold``: the detector's
    z at its false-positive rate, drawn as a line)."""
    from reports.plots import MARKERS, STUDENT_AXIS, new_figure

    panels = 2 if family.traces else 1
    fig = new_figure(4.2 * panels, 3.4)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    if family.floor:
        xs = [q for q, _ in family.floor]
        lo = [e.mean - (e.ci or 0.0) for _, e in family.floor]
        hi = [e.mean + (e.ci or 0.0) for _, e in family.floor]
        ax.fill_between(xs, lo, hi, color="0.6", alpha=0.25, linewidth=0, label="noise floor (95 % CI)")
        ax.plot(xs, [e.mean for _, e in family.floor], color="0.4", linestyle=":", linewidth=0.9)
    colors = {label: f"C{i % 10}" for i, label in enumerate(family.curves)}  # one colour per defense, both panels
    for i, (label, points) in enumerate(family.curves.items()):
        xs = [q for q, _ in points]
        ax.errorbar(xs, [e.mean for _, e in points], yerr=[e.ci or 0.0 for _, e in points], marker=MARKERS[i % len(
            MARKERS)], capsize=2, label=label, color=colors[label])
    budgets = sorted({q for pts in family.curves.values() for q, _ in pts if math.isfinite(q)})
    _budget_axis(ax, budgets)
    ax.axhline(0.0, color="0.7", linewidth=0.6)
    ax.set_xlabel("queries the attack made")
    ax.set_ylabel(STUDENT_AXIS)
    ax.legend(fontsize=7, loc="best")
    if family.traces:
        tx = axes[1]
        for label, points in family.traces.items():
            i = list(family.curves).index(label)
            tx.errorbar([q for q, _ in points], [e.mean for _, e in points], yerr=[e.ci or 0.0 for _, e in points],
                        marker=MARKERS[i % len(MARKERS)], capsize=2, label=label, color=colors[label])
        if trace_threshold is not None:
            tx.axhline(trace_threshold, color="0.3", linestyle="--", linewidth=0.9, label="detection threshold")
        _budget_axis(tx, budgets)
        tx.set_xlabel("queries the attack made")
        tx.set_ylabel("trace statistic z (stolen student)")
        tx.legend(fontsize=7, loc="best")
    n = [e.units or e.n for pts in family.curves.values() for _, e in pts]
    fig.suptitle(f"{title}\n{family.attack}: error bars 95 % CI over student seeds (units {min(n)}-{max(n)})"
                 if n else title, fontsize=9)
    return fig


def _budget_axis(ax: Any, budgets: list[float]) -> None:
    """A log x axis ticked at the budgets run, labelled as plain numbers (the report's style turns mathtext
    off, so matplotlib's default log labels would print as raw TeX)."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(budgets, [f"{q:g}" for q in budgets])


def budget_plots(cells: pd.DataFrame) -> list[tuple[BudgetFamily, dict[str, bytes]]]:
    """Each budget family with its figure rendered (PNG, PDF, SVG)."""
    from scipy.stats import norm

    from bench.api import TRACE_ALPHA
    from reports.plots import rendered, style

    threshold = float(norm.ppf(1 - TRACE_ALPHA))  # z of a one-sided p = TRACE_ALPHA: where `traced` begins
    out = []
    for family in budget_families(cells):
        with style():
            fig = budget_figure(family, f"{family.task} (profile {family.profile})", trace_threshold=threshold)
            out.append((family, rendered(fig)))
    return out
