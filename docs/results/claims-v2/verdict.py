"""The ASVP paper's four claims, judged per task from a claims-grid store (issue 15, item 4).

    python docs/results/claims-v2/verdict.py --home runs/claims-v2 [--tasks derain] > docs/results/claims-v2/verdict.md

Reads the store through the leaderboard's own tables (``reports.leaderboard.build_tables``), so every
figure here is one the leaderboard prints, plus three readings the leaderboard does not make:

- the teacher cost ASVP needs for a 1 dB and a 4 dB student drop (its curve per seed pair, read the
  other way round: student drop -> teacher cost, linear interpolation, never extrapolated);
- ASVP against each prior defense at each matched test cost: paired t-tests over (teacher seed, student
  seed) pairs, Holm-adjusted over the prior defenses of that cost;
- the per-task baselines: input, teacher (per teacher seed), reference and ground-truth student PSNR.

Every figure is a mean with its 95 % Student-t interval over the (teacher seed, student seed) pairs named
in the header of its task.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable

import pandas as pd

from reports.build import only_tasks
from reports.cells import load
from reports.leaderboard import STRONGEST, Row, Table, build_tables
from reports.matched import at_cost
from reports.significance import holm, paired_test
from reports.stats import Estimate, mean_ci

ASVP = "asvp"
FLOOR = "noise_floor"
COSTS = (0.1, 0.5, 1.0)
CLAIMED_STUDENT_DROP_DB = 4.0


def ci(e: Estimate, decimals: int = 2) -> str:
    if not e.n or e.mean is None or math.isnan(e.mean):
        return "–"
    if e.ci is None or math.isnan(e.ci):
        return f"{e.mean:.{decimals}f} (n=1)"
    return f"{e.mean:.{decimals}f} ± {e.ci:.{decimals}f}"


def p_text(p: float) -> str:
    if math.isnan(p):
        return "untestable"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def matched_rows(table: Table, cost: float) -> list[Row]:
    name = f"matched test cost {cost:g} dB"
    return [r for r in table.rows if r.group == name]


def cost_for_drop(cells: pd.DataFrame, drop: float) -> tuple[Estimate, int, float]:
    """ASVP's teacher cost at a student drop of ``drop`` dB, per seed pair (curve read the other way), and
    how many pairs reach it; with the largest drop any pair reached."""
    values, largest = [], -math.inf
    for _, c in cells.groupby(["teacher_seed", "seed"], dropna=False):
        points = list(zip(c["strength"], c["student_drop_db"], c["teacher_drop_db"]))
        largest = max(largest, float(c["student_drop_db"].max()))
        m = at_cost(points, drop, anchor=(1.0, 0.0, 0.0))
        if m.value is not None:
            values.append(m.value)
    return mean_ci(values), len(values), largest


def versus_priors(rows: list[Row]) -> list[str]:
    """ASVP's row against each prior defense's row of one matched-cost group (Holm over the priors)."""
    asvp = next((r for r in rows if r.defense_base == ASVP and r.student.n), None)
    priors = [r for r in rows if r.defense_base not in (ASVP, FLOOR) and not r.floor and r.student.n]
    if asvp is None or not priors:
        return []
    tests = [paired_test(asvp.samples, r.samples) for r in priors]
    adjusted = holm([t.p for t in tests])
    out = []
    for r, t, p in zip(priors, tests, adjusted):
        if math.isnan(p):
            verdict = "untestable"
        elif p < 0.05:
            verdict = "ASVP stronger" if t.mean_diff > 0 else "ASVP weaker"
        else:
            verdict = "not separable"
        out.append(f"{r.defense_base} {ci(r.student)} ({verdict}, diff {t.mean_diff:+.2f} dB, Holm {p_text(p)}, "
                   f"n={t.n})")
    return out


def baselines(cells: pd.DataFrame) -> list[str]:
    ref = cells[cells["defense"] == "none"]
    if ref.empty:
        ref = cells
    lines = [f"input {ref['input_psnr'].mean():.2f} dB"]
    for t, g in ref.groupby("teacher_seed", dropna=False):
        lines.append(f"teacher seed {int(t)}: {g['teacher_psnr'].mean():.2f} dB")
    return lines


def student_line(cells: pd.DataFrame) -> str:
    ref = cells.drop_duplicates(["teacher_seed", "seed"])
    parts = []
    for t, g in ref.groupby("teacher_seed", dropna=False):
        sd = g["student_ref_psnr"].std(ddof=1) if len(g) > 1 else math.nan
        gt = g["student_gt_psnr"].mean() if "student_gt_psnr" in g else math.nan
        parts.append(f"teacher {int(t)}: reference student {g['student_ref_psnr'].mean():.2f} dB (SD {sd:.2f} over "
                     f"{len(g)} seeds), ground-truth student {gt:.2f} dB")
    return "; ".join(parts)


def task_section(task: str, tables: list[Table], cells: pd.DataFrame) -> Iterable[str]:
    yield f"## {task}\n"
    done = cells[(cells["task_label"] == task) & (cells["status"] == "done")]
    pairs = done[["teacher_seed", "seed"]].drop_duplicates()
    yield (f"Seeds: student {sorted(int(s) for s in pairs['seed'].unique())}, teacher "
           f"{sorted(int(t) for t in pairs['teacher_seed'].unique())}; {len(done)} finished cells. "
           + ", ".join(baselines(done)) + ".\n")
    for attack, g in done.groupby("attack_label"):
        yield f"- {attack}: {student_line(g)}."
    yield ""
    for table in tables:
        if table.task != task:
            continue
        floor = next((r for r in table.rows if r.floor), None)
        yield f"### {table.attack}\n"
        if floor is not None:
            yield f"Noise floor (student drop of invisible answer noise): {ci(floor.student, 3)} dB.\n"
        yield "| test cost | ASVP student drop (dB) | SSIM drop (%) | vs floor (or attack) | vs prior defenses |"
        yield "|---|---|---|---|---|"
        for cost in COSTS:
            rows = matched_rows(table, cost)
            asvp = next((r for r in rows if r.defense_base == ASVP), None)
            if asvp is None:
                continue
            if not asvp.student.n:
                yield f"| {cost:g} dB | not reached | – | – | – |"
                continue
            if floor is not None:
                floor_v = ("above " if asvp.above_floor else "n.s. ") + p_text(asvp.p_floor)
            else:  # the strongest-attack view: each row against its own attack's floor, in that attack's table
                floor_v = asvp.defense.split(" · ", 1)[-1]
            partial = f" (on the {asvp.student.n} pairs that reach it)" if asvp.flags else ""
            priors = "; ".join(versus_priors(rows)) or "–"
            yield (f"| {cost:g} dB | {ci(asvp.student)}{partial} | {ci(asvp.ssim, 1)} | {floor_v} | {priors} |")
        if table.derived or table.attack == STRONGEST:
            yield ""
            continue
        swept = done[(done["attack_label"] == table.attack) & (done["defense_base"] == ASVP)
                     & done["strength"].notna()]
        if len(swept):
            yield ""
            for drop in (1.0, CLAIMED_STUDENT_DROP_DB):
                est, reached, largest = cost_for_drop(swept, drop)
                n = swept[["teacher_seed", "seed"]].drop_duplicates().shape[0]
                if reached:
                    yield (f"- Teacher cost for a {drop:g} dB student drop: {ci(est)} dB ({reached} of {n} pairs "
                           "reach it).")
                else:
                    yield (f"- A {drop:g} dB student drop is not reached at any strength run (largest on any pair: "
                           f"{largest:.2f} dB).")
            top = swept.groupby("strength")[["teacher_drop_db", "student_drop_db", "student_ssim_drop_pct"]]
            for strength, g in top:
                ssim = ci(mean_ci(g["student_ssim_drop_pct"]), 1)
                yield (f"- h = {strength:g}: teacher drop {ci(mean_ci(g['teacher_drop_db']))}, student drop "
                       f"{ci(mean_ci(g['student_drop_db']))} dB, SSIM drop {ssim} %.")
        yield ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="runs/claims-v2")
    ap.add_argument("--tasks", help="comma-separated tasks (default: every task in the store)")
    args = ap.parse_args()
    cells = load(args.home)
    if args.tasks:
        cells = only_tasks(cells, tuple(args.tasks.split(",")))
    tables = build_tables(cells)
    print("# The claims, per task (generated by verdict.py)\n")
    print("Mean ± 95 % CI over (teacher seed, student seed) pairs. ASVP's rows are its trade-off curve "
          "(h 1.05, 1.25, 2) read at each matched teacher cost measured on test. vs floor: Holm-adjusted "
          "paired t-test against the noise floor within the leaderboard group. vs prior defenses: ASVP's "
          "paired drops against each prior defense's, Holm over the priors of that cost.\n")
    for task in sorted(cells["task_label"].unique()):
        for line in task_section(task, tables, cells):
            print(line)


if __name__ == "__main__":
    main()
