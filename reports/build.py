"""``bench report``: every table and figure of a store, written to one folder.

Outputs (``--format``, default all): ``leaderboard.md``, ``leaderboard.tex`` (booktabs tables to paste),
``cells.csv`` (every cell, done and failed, one tidy row each), ``plots/`` (trade-off and bar PNGs per
task, a visual grid JPEG per task and attack, a budget curve per query-budget sweep: :mod:`reports.budget`)
and ``report.html`` (all of it on one self-contained page; the figures are drawn for it even when ``plots`` is
not asked for, and then not written as files).

A store with nothing finished, failed cells, configurations with one seed, or missing sample images
gives a report that says so (:func:`missing`), never a crash.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import BenchError
from bench.cache import atomic_write_bytes
from bench.progress import bar
from reports import askers, leaderboard, plots
from reports import budget as budget_mod
from reports import cells as cells_mod
from reports import grid as grid_mod
from reports import html as html_mod
from reports import latex as latex_mod
from reports.html import Figure
from reports.leaderboard import Table

FORMATS = ("md", "latex", "csv", "plots", "html")
_ALIASES = {"markdown": "md", "tex": "latex", "png": "plots"}


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``"md,latex"`` -> ``("md", "latex")``; ``None`` or ``"all"`` -> every format."""
    if text is None or text.strip() in ("", "all"):
        return FORMATS
    out = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        item = _ALIASES.get(item, item)
        if item not in FORMATS:
            raise BenchError(f"unknown report format '{item}'; choose from {', '.join(FORMATS)} (comma-separated), "
                             "or all.")
        if item not in out:
            out.append(item)
    return tuple(out)


@dataclass
class Report:
    out: Path
    files: list[Path] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list, repr=False)
    cells: pd.DataFrame | None = field(default=None, repr=False)


#: what docs/design.md asks of published numbers
PUBLISHED_SEEDS = "Published numbers use at least 5 student seeds and 3 teacher seeds (docs/design.md)"


def missing(cells: pd.DataFrame, tables: list[Table], store: str,
            plan: list[tuple[str, str]] | None = None, grid: Path | str | None = None) -> list[str]:
    """What the report cannot show, in words a reader can act on. ``plan``: the cells of ``grid``
    (:func:`reports.cells.grid_plan`); with it, what is missing is what the grid names and the source lacks,
    and a configuration the grid never pairs with an attack (a prior not run against feature KD) is not."""
    msgs = []
    if cells.empty:
        return [f"no finished cells in {store}; run bench run or bench sweep first."]
    done = cells[cells["status"] == "done"]
    failed = cells[cells["status"] != "done"]
    if done.empty:
        msgs.append(f"no finished cells in {store}; run bench run or bench sweep first "
                    f"({len(failed)} failed cell(s) are listed with their errors).")
    if len(failed):
        msgs.append(f"{len(failed)} cell(s) failed and are left out of the tables and plots; they are listed under "
                    "Failed cells with their errors. Fix the cause and re-run them (finished cells are kept).")
    msgs += apart(done)
    if (done["profile"] == "smoke").any():
        from bench.remarks import SMOKE_WHY

        msgs.append(SMOKE_WHY + ".")
    if plan is not None:
        msgs += _unfinished(done, plan, grid)
    tables = [t for t in tables if not t.derived]
    # a partial sweep: configurations some tables lack, among the tables of one profile and one task (by
    # name: its numerics, data or model versions and its attacks are compared; another task's grid is its own)
    task_names = dict(zip(done["task_id"], done["task"])) if "task_id" in done else {}
    family = {id(t): (t.profile, str(task_names.get(t.ids[1], t.task))) for t in tables}
    for key in sorted(set(family.values())) if plan is None else ():
        mine = [t for t in tables if family[id(t)] == key]
        labels = {r.config_id: f"{r.defense} ({r.budget_text})" for t in mine for r in t.rows
                  if r.matched_cost is None}
        for t in mine:
            absent = sorted(labels[c] for c in set(labels) - {r.config_id for r in t.rows})
            if absent:
                msgs.append(f"{t.task} · {t.attack} · profile {t.profile}: no finished cells for " + "; ".join(absent)
                            + f" (other {key[1]} tables, of other attacks or versions, have them).")
    listed = [(t, r) for t in tables for r in t.rows if r.matched_cost is None and not r.floor]
    one_seed = [f"{t.task} · {r.defense} ({r.budget_text}) · {t.attack} · profile {t.profile}"
                for t, r in listed if len(r.pairs) == 1]
    total = len(listed)
    if one_seed and len(one_seed) == total:  # a one-seed sweep: naming every configuration says nothing more
        msgs.append(f"every configuration ({total}) has one seed only, so no confidence interval (marked †). "
                    f"{PUBLISHED_SEEDS}.")
    elif one_seed:
        msgs.append(f"{len(one_seed)} configuration(s) have one seed only, so no confidence interval: "
                    + "; ".join(one_seed) + f". {PUBLISHED_SEEDS}.")
    return msgs


def _unfinished(done: pd.DataFrame, plan: list[tuple[str, str]], grid: Path | str | None) -> list[str]:
    """One line: how many of the grid's cells have no finished result here, by task, defense and attack."""
    have = ({cells_mod.plan_identity(c, p) for c, p in zip(done["config"], done["profile"])}
            if not done.empty and "config" in done else set())
    planned: dict[str, dict[str, list[bool]]] = {}  # task -> label -> found, in the grid's order
    for identity, label in plan:
        planned.setdefault(label.split(" · ")[0], {}).setdefault(label, []).append(identity in have)
    parts, n_lacking = [], 0
    for task, labels in planned.items():
        found = [f for fs in labels.values() for f in fs]
        n_lacking += found.count(False)
        if not any(found):  # a task not started: one entry, not one per configuration
            parts.append(f"{task}: all {len(found)}")
        else:
            parts += [f"{label}: {fs.count(False)} of {len(fs)}" for label, fs in labels.items() if not all(fs)]
    if not n_lacking:
        return []
    return [f"{n_lacking} of the {len(plan)} cells of {grid} have no finished result here (a partial grid: run bench "
            f"sweep on it to finish them): {'; '.join(parts)}."]


def apart(done: pd.DataFrame) -> list[str]:
    """One line per task whose cells the store holds under several numerics or data versions: they are shown
    as separate tables (each labelled by what differs), never pooled as seeds of one configuration."""
    if done.empty or "numerics" not in done:
        return []
    msgs = []
    same = ["profile_label", "task", "task_params", "teacher_model", "student_model"]
    for (profile, task, *_), g in done.groupby(same, sort=True, dropna=False):
        labels = sorted(set(g["task_label"]))
        if len(labels) > 1:
            msgs.append(f"{task} · profile {profile}: the store holds its cells under {len(labels)} numerics or data "
                        f"versions ({'; '.join(labels)}); each is its own table, never pooled as seeds (a model "
                        "trained with other threads, on another device or on other data is another model).")
    return msgs


#: a figure's file name is cut to this many characters (a label naming a long --data path made names over
#: the file system's 255-byte limit: "File name too long"), keeping a digest of the whole so names stay unique
SLUG_MAX = 120


def _slug(*parts: str) -> str:
    import hashlib

    name = "-".join(re.sub(r"[^A-Za-z0-9.=]+", "_", p).strip("_") or "x" for p in parts)
    if len(name) <= SLUG_MAX:
        return name
    return f"{name[:SLUG_MAX - 13]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def figures(home: Path | None, cells: pd.DataFrame, tables: list[Table], *, progress: bool = True) -> tuple[
        list[Figure], list[str]]:
    """Trade-off and bar plot per (profile, task), visual grid per (profile, task, attack), and a budget curve
    per query-budget sweep (:mod:`reports.budget`)."""
    if cells.empty:
        return [], []
    done = cells[cells["status"] == "done"]
    jobs = []
    for (profile, task), g in done.groupby(["profile_label", "task_label"], sort=True):
        title = f"{task} (profile {profile})"
        if set(g["defense_base"]) <= {"none"}:  # nothing to compare: an empty chart helps no one
            continue
        jobs.append(("tradeoff", profile, task, g, title, None))
        jobs.append(("bars", profile, task, g, title, None))
    for t in (t for t in tables if not t.derived):
        jobs.append(("grid", t.profile, t.task, done, f"{t.task} · {t.attack} (profile {t.profile})", t))
    out, notes, used = [], [], set()
    for kind, profile, task, g, title, table in bar(jobs, desc="report: figures", show=progress, unit="fig"):
        name = _slug(kind, task, *(() if table is None else (table.attack,)), profile)
        while name in used:
            name += "_"
        used.add(name)
        vectors: dict[str, bytes] = {}
        if kind == "tradeoff":
            vectors = plots.tradeoff(g, title)
            caption = (f"{task}, profile {profile}: teacher PSNR drop against student PSNR drop, one curve per "
                       "defense over its strengths (points at calibrated budgets sit at their test cost), per "
                       "attack, the noise floor as a grey band over its interval (an inset enlarges points "
                       "crowded near the origin); the title says what the error bars are (none with one seed "
                       "pair).")
        elif kind == "bars":
            vectors = plots.bars(g, title)
            caption = (f"{task}, profile {profile}: student PSNR drop per defense and attack, best defense on "
                       "top, each labelled with its teacher cost on test; the title says what the error bars are "
                       "(none with one seed pair).")
        elif home is None:  # read from cells.csv: the sample images are in the store
            notes.append(f"{title}: no visual grid (it shows the store's sample images; a cells.csv has none).")
            continue
        else:
            chosen = grid_mod.chosen_cells(table, g)
            notes += grid_mod.missing_images(home, chosen, title)
            image = grid_mod.grid(home, chosen, title)
            upscaled = bool(g.loc[g["task_label"] == task, "task"].eq("sr").any()) if "task" in g else False
            caption = (f"{task}, attack {table.attack}, profile {profile}: one test image through the teacher, the "
                       "served teacher and the students stolen from each"
                       + (" (the input shown bicubic-upsampled to the output size)" if upscaled else "")
                       + "; under each tile its PSNR against the ground truth on this image, and under each row "
                       "the window where the input is most degraded (outlined on the ground truth) enlarged 4x, "
                       "with its own PSNR.")
        if vectors:
            image = vectors.pop("png")
        jpeg = kind == "grid"
        out.append(Figure(profile=profile, task=task, kind=kind, caption=caption, image=image,
                          filename=f"{name}.jpg" if jpeg else f"{name}.png",
                          dpi=grid_mod.GRID_DPI if jpeg else plots.BAR_DPI if kind == "bars" else 200,
                          vectors=vectors))
    for family, vectors in budget_mod.budget_plots(done):
        name = _slug("budget", family.task, family.attack, family.profile)
        while name in used:
            name += "_"
        used.add(name)
        caption = (f"{family.task}, attack {family.attack}, profile {family.profile}: student PSNR drop against "
                   "the queries the attack made (log scale), one line per defense configuration, each point paired "
                   "with the reference student stolen with the same budget; the noise floor at each budget as a "
                   "grey band" + ("; beside it, the trace statistic of the stolen students" if family.traces else "")
                   + ".")
        out.append(Figure(profile=family.profile, task=family.task, kind="budget", caption=caption,
                          image=vectors.pop("png"), filename=f"{name}.png", dpi=200, vectors=vectors))
    return out, notes


def only_tasks(cells: pd.DataFrame, tasks: tuple[str, ...]) -> pd.DataFrame:
    """The cells of ``tasks``; a one-line error naming the store's tasks for a task it does not hold."""
    present = sorted(set(cells["task"])) if not cells.empty else []
    unknown = [t for t in tasks if t not in present]
    if unknown:
        raise BenchError(f"--tasks {','.join(unknown)}: no cells of that task in this store; it holds "
                         f"{', '.join(present) or 'no cells'}.")
    return cells[cells["task"].isin(tasks)]


def build_report(home: Path | str | None, out: Path | str | None = None, formats: tuple[str, ...] = FORMATS, *,
                 progress: bool = True, tasks: tuple[str, ...] | None = None,
                 grid: Path | str | None = None, csv_files: Sequence[Path | str] = ()) -> Report:
    """Read the store at ``home`` and write the report in ``formats`` to ``out`` (default ``<home>/report``);
    ``tasks``: only these tasks' cells (by name); ``grid``: only the cells of that grid file. With ``csv_files``
    instead of a store (``home`` None): committed reports' cells.csv, read as one table (a grid committed in
    slices); the figures that need the store's sample images are left out, with a note."""
    if csv_files:
        if out is None:
            raise BenchError("bench report --cells needs --out DIR (there is no store to write the report into).")
        cells, store = cells_mod.from_csv(csv_files, grid=grid), ", ".join(str(f) for f in csv_files)
    else:
        home = Path(home) if home is not None else Path("runs")
        cells, store = cells_mod.load(home, grid=grid), str(home / "results.sqlite")
    out = Path(out) if out is not None else Path(home) / "report"
    if tasks:
        cells = only_tasks(cells, tasks)
    tables = leaderboard.build_tables(cells)
    failed = cells[cells["status"] != "done"] if not cells.empty else cells
    n_done = int((cells["status"] == "done").sum()) if not cells.empty else 0
    payers = askers.who_pays(cells)
    plan = cells_mod.grid_plan(grid) if grid is not None else None
    report = Report(out=out, tables=tables, cells=cells, messages=missing(cells, tables, store, plan, grid))
    if "plots" in formats or "html" in formats:
        report.figures, notes = figures(home, cells, tables, progress=progress)
        report.messages += notes

    def write(name: str, data: bytes) -> None:
        path = out / name
        atomic_write_bytes(path, data)
        path.chmod(0o644)  # a report is for sharing (the atomic temporary file is private)
        report.files.append(path)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the report folder {out}: {exc.strerror}; pass a writable --out DIR.") from None
    if "md" in formats:
        write("leaderboard.md", (leaderboard.markdown(tables, report.messages, failed, store, n_done) + "\n"
                                 + askers.markdown(payers, escape=leaderboard.md_escape)).encode())
    if "latex" in formats:
        write("leaderboard.tex", latex_mod.latex(tables, report.messages).encode())
    if "csv" in formats:
        write("cells.csv", cells_mod.csv_frame(cells).to_csv(index=False).encode())
    if "plots" in formats:
        for f in report.figures:
            write(f"plots/{f.filename}", f.image)
            for fmt, data in f.vectors.items():  # PDF and SVG: the figures a LaTeX paper includes
                write(f"plots/{Path(f.filename).stem}.{fmt}", data)
    if "html" in formats:
        page = html_mod.page(tables, report.figures, failed, report.messages, store=store, n_done=n_done,
                             generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), payers=payers)
        write("report.html", page.encode())
    return report
