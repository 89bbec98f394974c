"""Leaderboards: per (profile, task, attack), defenses ranked by student drop at equal teacher budget.

One table per (profile, task, attack); its rows are defense configurations, in groups of equal teacher
budget: each calibrated budget (``budget_db``, ascending), then the ``uncalibrated`` cells, which ran at
a set strength and show the teacher drop they measured, so a reader sees what the student drop cost.
Within a group, configurations are ranked by mean student PSNR drop (highest first). Every number is a
mean over seeds with its 95 % Student-t interval (:mod:`reports.stats`), and the seed count is shown.

A defense that touches only a channel the attack cannot see (features, against an output-only attack)
is listed but not ranked: its student is the undefended one, and crediting its zero drop, or its zero
teacher cost, would compare nothing.

This module computes the tables and renders Markdown (tabulate); :mod:`reports.latex` and
:mod:`reports.html` render the same :class:`Table` objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from reports.cells import format_value
from reports.stats import Estimate, mean_ci

HEADERS = ("Rank", "Defense", "Acts on", "Teacher budget", "Teacher drop (dB)", "Student drop (dB)",
           "Student SSIM drop (%)", "Seeds")
#: decimals per estimate column (screen tables; the LaTeX tables print dB to 2 decimals, as papers do)
DECIMALS = {"teacher": 3, "student": 3, "ssim": 1}
ONE_SEED = "†"
UNSEEN = "‡"


@dataclass
class Row:
    rank: int | None
    defense: str
    channels: str
    sees: bool
    budget_db: float | None
    teacher: Estimate
    student: Estimate
    ssim: Estimate
    seeds: list[int]
    config_id: str
    family_id: str
    defense_base: str
    failed: int = 0

    @property
    def budget_text(self) -> str:
        return "uncalibrated" if self.budget_db is None else f"{format_value(float(self.budget_db))} dB"


@dataclass
class Table:
    profile: str
    task: str
    attack: str
    attack_access: str | None
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    #: (profile_id, task_id, attack_id): which cells the table covers (labels are for reading)
    ids: tuple[str, str, str] = ("", "", "")

    @property
    def title(self) -> str:
        access = f" ({self.attack_access})" if self.attack_access else ""
        return f"{self.task} · {self.attack}{access} · profile {self.profile}"


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def build_tables(cells: pd.DataFrame) -> list[Table]:
    """The leaderboard tables of a tidy cell table (:func:`reports.cells.tidy`)."""
    if cells.empty:
        return []
    done = cells[cells["status"] == "done"]
    failed = cells[cells["status"] != "done"]
    tables = []
    for (profile_id, task_id, attack_id), grp in done.groupby(["profile_id", "task_id", "attack_id"], sort=False):
        first = grp.iloc[0]
        fail_here = failed[(failed["profile_id"] == profile_id) & (failed["task_id"] == task_id)
                           & (failed["attack_id"] == attack_id)]
        rows = []
        for config_id, g in grp.groupby("config_id", sort=False):
            budget = g["budget_db"].iloc[0]
            label = g["defense_label"].iloc[0]
            strengths = sorted(set(g["strength"].dropna()))
            if not pd.isna(budget) and strengths:  # calibrated: the strength calibration found, per seed
                span = format_value(strengths[0]) + ("" if len(strengths) == 1 else f"–{format_value(strengths[-1])}")
                base = g["defense_base"].iloc[0]
                inner = f"{g['strength_param'].iloc[0]}={span}"
                label = f"{base[:-1]}, {inner})" if base.endswith(")") else f"{base} ({inner})"
            rows.append(Row(
                rank=None, defense=label, channels=g["channels"].iloc[0],
                sees=bool(g["attack_sees_defense"].all()),
                budget_db=None if pd.isna(budget) else float(budget),
                teacher=mean_ci(g["teacher_drop_db"]), student=mean_ci(g["student_drop_db"]),
                ssim=mean_ci(g["student_ssim_drop_pct"]), seeds=sorted(int(s) for s in g["seed"]),
                config_id=config_id, family_id=g["family_id"].iloc[0], defense_base=g["defense_base"].iloc[0],
                failed=int((fail_here["config_id"] == config_id).sum()),
            ))
        rows = _rank(rows)
        table = Table(profile=first["profile_label"], task=first["task_label"], attack=first["attack_label"],
                      attack_access=first["attack_access"] if isinstance(first["attack_access"], str) else None,
                      rows=rows, ids=(profile_id, task_id, attack_id))
        table.notes = _notes(table, grp, fail_here)
        tables.append(table)
    tables.sort(key=lambda t: (t.profile, t.task, t.attack))
    return tables


def _rank(rows: list[Row]) -> list[Row]:
    budgets = sorted({r.budget_db for r in rows if r.budget_db is not None})
    ordered: list[Row] = []
    for b in [*budgets, None]:
        group = [r for r in rows if r.budget_db == b]
        seen = sorted((r for r in group if r.sees), key=lambda r: (-_key(r.student.mean), r.defense))
        rank, last = 0, None
        for i, r in enumerate(seen, 1):
            if last is None or not math.isclose(r.student.mean, last, rel_tol=0, abs_tol=1e-12):
                rank, last = i, r.student.mean
            r.rank = rank
        ordered += seen + sorted((r for r in group if not r.sees), key=lambda r: r.defense)
    return ordered


def _key(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def _notes(table: Table, grp: pd.DataFrame, failed: pd.DataFrame) -> list[str]:
    notes = []
    ref = mean_ci(grp["teacher_psnr"]).mean, mean_ci(grp["student_ref_psnr"]).mean
    gt = mean_ci(grp["student_gt_psnr"]).mean if "student_gt_psnr" in grp else math.nan
    if not any(math.isnan(v) for v in ref):
        also = "" if math.isnan(gt) else f", the attack trained on ground truth instead of answers {gt:.2f} dB"
        notes.append(f"Undefended teacher {ref[0]:.2f} dB PSNR, reference student {ref[1]:.2f} dB{also} (means "
                     "over this table's cells); drops are paired differences from the reference.")
    if any(r.budget_db is None for r in table.rows):
        notes.append("Uncalibrated: each defense at the strength it was run with; read its student drop "
                     "together with the teacher drop it costs.")
    if any(r.student.n == 1 for r in table.rows):
        notes.append(f"{ONE_SEED} one seed: no confidence interval (run more seeds).")
    unseen = [r for r in table.rows if not r.sees]
    if unseen:
        notes.append(f"{UNSEEN} acts only on a channel this attack cannot see ({table.attack_access or 'its access'}"
                     "): the student is the undefended one, so the row is not ranked.")
    all_seeds = sorted({s for r in table.rows for s in r.seeds})
    for r in table.rows:
        missing = [s for s in all_seeds if s not in r.seeds]
        if missing:
            notes.append(f"{r.defense} ({r.budget_text}): seed(s) {_seed_list(missing)} missing; has "
                         f"{_seed_list(r.seeds)}.")
    if len(failed):
        by_label = failed.groupby("defense_label", sort=True).size()
        listed = ", ".join(f"{lab} ({n})" for lab, n in by_label.items())
        notes.append(f"Failed cells, not in the table: {listed}; see Failed cells.")
    return notes


# ------------------------------------------------------------------------------------------ rendering
def format_estimate(e: Estimate, decimals: int, pm: str = " ± ") -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "n/a"
    text = _fixed(e.mean, decimals)
    return text if e.ci is None else f"{text}{pm}{_fixed(e.ci, decimals)}"


def _fixed(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def row_cells(row: Row, pm: str = " ± ", escape: Callable[[str], str] = str,
              decimals: dict[str, int] | None = None) -> list[str]:
    """One table row as display strings (``escape`` is applied to names, never to numbers)."""
    d = {**DECIMALS, **(decimals or {})}
    acts = row.channels if row.sees else f"{row.channels} {UNSEEN}"
    seeds = f"{len(row.seeds)}" + (f" {ONE_SEED}" if len(row.seeds) == 1 else "")
    return [
        "–" if row.rank is None else str(row.rank), escape(row.defense), escape(acts), escape(row.budget_text),
        format_estimate(row.teacher, d["teacher"], pm), format_estimate(row.student, d["student"], pm),
        format_estimate(row.ssim, d["ssim"], pm), seeds,
    ]


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def table_markdown(table: Table) -> str:
    from tabulate import tabulate

    body = [row_cells(r, escape=_md_escape) for r in table.rows]
    text = tabulate(body, headers=HEADERS, tablefmt="github", disable_numparse=True,
                    colalign=("right", "left", "left", "left", "right", "right", "right", "right"))
    notes = "".join(f"\n- {_md_escape(n)}" for n in table.notes)
    return f"## {_md_escape(table.title)}\n\n{text}\n{notes}\n"


def intro(n_done: int, n_failed: int, store: str) -> str:
    return (f"Store {store}: {n_done} finished cell(s), {n_failed} failed. Per task and attack, defenses ranked "
            "by student PSNR drop (what the thief loses) within groups of equal teacher budget (what honest users "
            "lose); mean ± 95 % confidence interval over seeds (Student t). Teacher drop: teacher − served PSNR "
            "on the test split. Student drop: reference student − defended student PSNR, the two students paired "
            "(same initialisation, queries, data order and budget).")


def markdown(tables: list[Table], messages: list[str], failed: pd.DataFrame, store: str, n_done: int) -> str:
    parts = ["# Leaderboard\n", _md_escape(intro(n_done, len(failed), store)) + "\n"]
    if messages:
        parts.append("## What is missing\n\n" + "".join(f"- {_md_escape(m)}\n" for m in messages))
    parts += [table_markdown(t) for t in tables]
    if len(failed):
        from tabulate import tabulate

        body = [[_md_escape(c) for c in (r["task_label"], r["defense_label"], r["attack_label"], r["profile_label"],
                                         str(r["seed"]), _one_line(r["error"]))] for _, r in failed.iterrows()]
        parts.append("## Failed cells\n\n" + tabulate(body, headers=("Task", "Defense", "Attack", "Profile", "Seed",
                                                                     "Error"), tablefmt="github",
                                                        disable_numparse=True) + "\n")
    return "\n".join(parts)


def _one_line(error: object) -> str:
    if not isinstance(error, str) or not error:
        return "(no error recorded)"
    return error.strip().splitlines()[0]
