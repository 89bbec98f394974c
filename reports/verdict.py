"""``bench verdict``: the ASVP paper's four claims judged per task, from a store or a committed ``cells.csv``.

The README's "Does ASVP hold up?" section and a report's ``verdict.md`` are this module's output, never typed
(``bench verdict --cells docs/results/claims-v2/cells.csv --readme README.md`` rewrites the section between
its markers; a test fails when they differ). Every figure comes from the leaderboard's own tables
(:func:`reports.leaderboard.build_tables`), so the verdict and the leaderboard share one test, one family
definition and one baseline:

- the test: :data:`reports.significance.METHOD_TEXT` (student seeds are the units; teacher seeds fixed);
- the family: :data:`reports.significance.FAMILY_TEXT` (ASVP against each prior is read from the
  leaderboard group's pairwise adjusted p-values, :attr:`reports.leaderboard.Row.p_vs`);
- the baseline: the mean of the reference and the noise-floor student of each pair, where every pair has both;
- the attacker: the worst case over every attack run (the first table of a task with several attacks);
  with one attack, that attack's table;
- ASVP by its better reading: where the store holds several ASVP families (layouts), each cost takes the one
  with the largest worst-case drop, and says which.

How each claim is judged (stated in the output too):

1. *student PSNR down by up to 4 dB*: the worst-case student drop at each matched teacher cost (0.1, 0.5,
   1 dB), with the pairs that reach it; reproduced where a mean reaches 4 dB at some cost up to 1 dB.
2. *student SSIM down 60-75 %*: ASVP's largest mean SSIM drop at any matched cost under any attack (and the
   largest single pair); reproduced where a mean reaches 60 %.
3. *teacher down < 0.1 dB*: at 0.1 dB of teacher cost (measured on test), ASVP's worst-case drop against the
   noise floor's in its family; holds in direction when above the floor, in size when also >= 1 dB.
4. *stronger than prior defenses*: at each cost ASVP against each prior in its family; reproduced at a cost
   where ASVP is above every prior that reaches it.

A task whose teacher gains under 1 dB over its input, or whose undefended students beat their teacher, cannot
test any claim (:func:`bench.remarks.teacher_remarks`): its row says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import BenchError
from reports.leaderboard import FLOOR_DEFENSE, MATCHED_COSTS, ROUGH, WORST, Row, Table, build_tables, format_estimate
from reports.significance import ALPHA, FAMILY_TEXT, METHOD_TEXT
from reports.stats import Estimate, mean_ci

ASVP = "asvp"
CLAIMED_DROP_DB = 4.0
CLAIMED_SSIM_PCT = 60.0
#: README markers between which ``--readme`` writes the generated section
START, END = "<!-- bench verdict: start -->", "<!-- bench verdict: end -->"


def _est(e: Estimate, decimals: int = 2) -> str:
    return format_estimate(e, decimals)  # the leaderboard's own rendering (n/a, no "-0.00")


def _p(p: float) -> str:
    return "untestable" if math.isnan(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


def _n(row: Row) -> str:
    units = row.student.units or len(row.seeds)
    return f"n = {row.student.n} pairs, {units} student seeds"


def _group(table: Table, cost: float) -> list[Row]:
    name = f"matched test cost {cost:g} dB"
    return [r for r in table.rows if r.group == name]


def _asvp(rows: list[Row]) -> Row | None:
    """ASVP's row of a group: the family (layout) with the largest drop where there are several."""
    mine = [r for r in rows if r.defense_base.split(" ")[0] == ASVP and r.student.n]
    return max(mine, key=lambda r: r.student.mean) if mine else None


def _primary(tables: list[Table], task: str) -> Table | None:
    """The table a task's claims are judged on: its worst case over attacks, else its only attack's table."""
    mine = [t for t in tables if t.task == task]
    worst = [t for t in mine if t.attack == WORST]
    return worst[0] if worst else (mine[0] if len(mine) == 1 else None)


def _testable(cells: pd.DataFrame) -> str | None:
    """Why a task cannot test the claims (None: it can)."""
    from bench.remarks import MIN_TEACHER_GAIN_DB

    inp, teacher = cells["input_psnr"].mean(), cells["teacher_psnr"].mean()
    ref = cells["student_ref_psnr"].mean()
    if teacher - inp < MIN_TEACHER_GAIN_DB:
        return (f"cannot test: the teacher gains {teacher - inp:+.2f} dB over its input ({inp:.2f} -> {teacher:.2f} "
                f"dB, under {MIN_TEACHER_GAIN_DB:g} dB)" + (f" and its students beat it ({ref:.2f} dB)"
                                                             if ref > teacher else ""))
    if ref > teacher:
        return f"cannot test: the undefended students ({ref:.2f} dB) beat their teacher ({teacher:.2f} dB)"
    return None


def _replicated(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with their drops from the same baseline the tables use (per attack: reference and floor)."""
    from reports.leaderboard import replicated_drops

    parts = [replicated_drops(g)[0] for _, g in cells.groupby(["profile_id", "task_id", "attack_id"], sort=False)]
    return pd.concat(parts) if parts else cells


def judge_task(task: str, tables: list[Table], cells: pd.DataFrame) -> dict[str, str]:
    """The four claims' cells of one task (each a short text with its figures, test, n and verdict)."""
    done = cells[(cells["task_label"] == task) & (cells["status"] == "done")]
    blocked = _testable(done)
    table = _primary(tables, task)
    if blocked or table is None:
        why = blocked or "no table to judge on (several attacks but no worst case)"
        return {c: why for c in ("drop", "ssim", "cost", "priors")}
    if not (done["defense"] == ASVP).any():
        # a partial grid (priors first, ASVP later): "never reaches" would misstate a cell not yet run
        why = "not judged: no ASVP cell finished on this task (a partial grid; run its ASVP rows)"
        return {c: why for c in ("drop", "ssim", "cost", "priors")}
    mde = f"MDE {table.mde[0]:.2f} dB" if table.mde[1] >= 2 else "no MDE (no floor)"
    out: dict[str, str] = {}
    # 1. the student drop at each matched cost (worst case over attacks)
    parts, reached_4 = [], False
    for cost in MATCHED_COSTS:
        row = _asvp(_group(table, cost))
        if row is None:
            parts.append(f"{cost:g} dB: not reached")
            continue
        reached_4 |= row.student.mean >= CLAIMED_DROP_DB
        partial = f" on the {row.student.n} pairs that reach it" if "~" in row.flags else ""
        rough = " ≈" if ROUGH in row.flags else ""
        parts.append(f"{cost:g} dB: {_est(row.student)}{rough}{partial}")
    asvp_cells = _replicated(done)
    asvp_cells = asvp_cells[asvp_cells["defense"] == ASVP]
    top = asvp_cells.loc[asvp_cells["student_drop_db"].idxmax()] if len(asvp_cells) else None
    largest = (f"; largest single pair {top['student_drop_db']:.1f} dB at {top['teacher_drop_db']:.2f} dB teacher "
               f"cost ({top['attack_label']})" if top is not None else "")
    out["drop"] = ("; ".join(parts) + largest + (". **Reproduced**" if reached_4 else ". Not reproduced"))
    # 2. SSIM: the largest mean at a matched cost under any attack
    best_ssim, where = -math.inf, ""
    for t in (t for t in tables if t.task == task and not t.derived):
        for cost in MATCHED_COSTS:
            row = _asvp(_group(t, cost))
            if row is not None and row.ssim.n and row.ssim.mean > best_ssim:
                best_ssim, where = row.ssim.mean, f"{_est(row.ssim, 1)} % ({t.attack}, {cost:g} dB)"
    pair_ssim = asvp_cells["student_ssim_drop_pct"].max() if len(asvp_cells) else math.nan
    out["ssim"] = (f"at most {where}; largest single pair {pair_ssim:.1f} %"
                   + (". **Reproduced**" if best_ssim >= CLAIMED_SSIM_PCT else ". Not reproduced")
                   if where else "n/a")
    # 3. at 0.1 dB of teacher cost, against the floor
    row = _asvp(_group(table, MATCHED_COSTS[0]))
    floor = next((r for r in _group(table, MATCHED_COSTS[0]) if r.floor), None)
    if row is None:
        out["cost"] = "ASVP never costs as little as 0.1 dB. Not reproduced"
    elif floor is None:
        out["cost"] = f"{_est(row.student)} dB at 0.1 dB ({_n(row)}); no noise floor to test against"
    else:
        word = ("above the floor" if row.above_floor else
                "not separable from the floor" if not row.p_floor < ALPHA else "below the floor")
        size = row.student.mean >= 1.0
        verdict = ("**holds**" if row.above_floor and size else "holds in direction, not size" if row.above_floor
                   else "not reproduced")
        out["cost"] = (f"at 0.1 dB: {_est(row.student)} dB, {word} (floor {_est(floor.student)}; Holm "
                       f"{_p(row.p_floor)}; {_n(row)}; {mde}): {verdict}")
    # 4. against each prior at each cost, in the family's own adjusted p-values
    costs, asvp_reaches = [], False
    for cost in MATCHED_COSTS:
        rows = _group(table, cost)
        asvp = _asvp(rows)
        priors = [r for r in rows if not r.floor and r.student.n and r is not asvp
                  and r.defense_base.split(" ")[0] != ASVP and r.rank is not None]
        asvp_reaches |= asvp is not None
        if asvp is None or not priors:
            continue
        above = [r for r in priors if asvp.p_vs.get(r.config_id, math.nan) < ALPHA
                 and asvp.student.mean > r.student.mean]
        names = ", ".join(sorted(r.defense_base.split(" ")[0] for r in priors if r not in above))
        ps = [asvp.p_vs.get(r.config_id, math.nan) for r in priors]
        worst_p = max((p for p in ps if not math.isnan(p)), default=math.nan)
        costs.append(f"{cost:g} dB: above all {len(priors)} (Holm {_p(worst_p).replace('=', '<=')})"
                     if len(above) == len(priors)
                     else f"{cost:g} dB: not separable from {names}" if not above
                     else f"{cost:g} dB: above {len(above)} of {len(priors)}, not separable from {names}")
    any_prior = (~done["defense"].isin((ASVP, "none", FLOOR_DEFENSE))).any()
    out["priors"] = ("; ".join(costs) if costs else "no prior defense run on this task" if not any_prior
                     else "no prior defense reaches a cost ASVP reaches" if asvp_reaches
                     else "ASVP reaches no matched cost: nothing to compare")
    return out


CLAIMS = (("drop", "student PSNR down by up to 4 dB (worst-case student drop at matched test cost, dB)"),
          ("ssim", "student SSIM down 60-75 %"),
          ("cost", "teacher down < 0.1 dB while students lose"),
          ("priors", "stronger than prior defenses (worst case, each matched cost)"))


def verdict_markdown(cells: pd.DataFrame, *, source: str) -> str:
    """The generated verdict: how it was judged, one table of claims x tasks, and each task's baselines."""
    done = cells[cells["status"] == "done"]
    if done.empty:
        raise BenchError(f"no finished cells in {source}; run the claims grid first (grids/claims-v2.yaml).")
    tables = build_tables(cells)
    tasks = sorted(done["task_label"].unique())
    judged = {t: judge_task(t, tables, cells) for t in tasks}
    pairs = done[["teacher_seed", "seed"]].drop_duplicates()
    attacks = ", ".join(sorted(done["attack_label"].unique()))
    lines = [
        f"Generated by `bench verdict` from `{source}` ({len(done)} finished cells; student seeds "
        f"{sorted(int(s) for s in pairs['seed'].unique())}, teacher seeds "
        f"{sorted(int(t) for t in pairs['teacher_seed'].unique())}; attacks: {attacks}). Figures: mean ± 95 % CI "
        "over student seeds. Each task is judged on its worst case over the attacks run (per seed pair, the best "
        "undefended student minus the best defended one), drops measured from the mean of the reference and the "
        f"noise-floor student; a prior defense's worst case is over the attacks that faced it. "
        f"{METHOD_TEXT} {FAMILY_TEXT} MDE: the smallest effect the table could have seen "
        "(80 % power, alpha 0.05 before correction). A claim is reproduced where: a mean student drop reaches "
        "4 dB at a matched cost up to 1 dB; a mean SSIM drop reaches 60 %; at 0.1 dB of teacher cost the drop is "
        "above the floor and at least 1 dB; ASVP is above every prior at a cost. ≈: on some pair the reading "
        "crosses a bracket wider than max(0.1 dB, half the cost) or a curve not monotone in strength.",
        "",
        "| claim | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for key, title in CLAIMS:
        lines.append(f"| {title} | " + " | ".join(judged[t][key] for t in tasks) + " |")
    lines.append("")
    for task in tasks:
        g = done[done["task_label"] == task]
        teachers = ", ".join(f"{mean_ci(x['teacher_psnr']).mean:.2f}" for _, x in g.groupby("teacher_seed"))
        lines.append(f"- {task}: input {g['input_psnr'].mean():.2f} dB, teachers {teachers} dB (per teacher seed), "
                     f"reference students {g['student_ref_psnr'].mean():.2f} dB, ground-truth students "
                     f"{g['student_gt_psnr'].mean():.2f} dB.")
    return "\n".join(lines) + "\n"


def load_cells(home: str | None, csv: str | Sequence[str] | None, grid: str | None = None) -> tuple[pd.DataFrame, str]:
    """The cells of a store, or of one or more reports' cells.csv (read as one table), and a name for them."""
    from reports import cells as cells_mod

    files = [csv] if isinstance(csv, str) else list(csv or [])
    if bool(home) == bool(files):
        raise BenchError("bench verdict reads one source: --home DIR (a store) or --cells FILE (a report's cells.csv; "
                         "repeat it for a grid committed in slices).")
    if files:
        return cells_mod.from_csv(files, grid=grid), ", ".join(files)
    return cells_mod.load(home, grid=grid), str(Path(home) / "results.sqlite")


def replace_section(text: str, section: str, where: str) -> str:
    """``text`` with the part between the verdict markers replaced by ``section``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise BenchError(f"{where} has no verdict markers; put '{START}' and '{END}' on lines of their own where "
                         "the verdict goes.")
    return pattern.sub(lambda _: f"{START}\n{section}{END}", text, count=1)


def section_of(text: str) -> str | None:
    """The generated part of a README between the markers (None: no markers)."""
    m = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.S)
    return m.group(1) if m else None
