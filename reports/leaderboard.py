"""Leaderboards: per (profile, task, attack), defenses ranked by student drop at equal teacher cost, with
the noise floor and significance (DESIGN section 2, "Equal cost, measured on test" and "The noise floor
and significance").

One table per (profile, task, attack). Its rows come in ranked *groups*, in this order:

1. **Matched test cost** (the primary ranking; ``MATCHED_COSTS``, 0.1, 0.5 and 1.0 dB): every defense run
   at two or more strengths is one curve per (teacher seed, student seed) pair, teacher drop on test
   against student drop, read at the cost by interpolation (:func:`reports.matched.at_cost`, monotone
   cubic where the curve is monotone, marked ``≈`` where a reading crosses a wide bracket; the
   curve starts at (0, 0) at the identity strength where the plugin says its answers are then the
   teacher's, ``Defense.strength_identity``). A curve that does not reach the cost gives no value for
   that pair (never an extrapolation) and the row says on how many pairs it was reached.
2. **Calibrated on calib** (deployment-realistic: what an owner can do without test data): cells run at
   the strength that cost ``budget_db`` on the calib split, with the cost they had on test beside it and
   a warning where the two part by more than 2x or 0.1 dB (:func:`bench.calibrate.transfer_warning`).
3. **As run**: every configuration at the strength it was run with, with the teacher cost it had.

Every group that holds a ``noise_floor`` configuration shows it as the ``noise floor`` row: a student
trained on its own from invisibly perturbed answers, whose spread is the chaos of training. Within a
group each row's student drops are tested against the floor and against every other row on the seed pairs
both have (:func:`reports.significance.verdicts`: the crossed design's test on student seeds, Holm-corrected
within the group, one family: :data:`reports.significance.FAMILY_TEXT`); a row's rank is 1 + the number of
rows significantly above it, so rows that cannot be separated share a rank. Every number is a mean over
student seeds (each the mean over its teacher seeds) with its 95 % Student-t interval
(:func:`reports.stats.unit_ci`), the pair counts are shown, and each table states its minimum detectable
effect. Drops are measured from the mean of the reference and the noise-floor student where every pair has
both (:func:`replicated_drops`). A task with several attacks gets a first table of each defense's worst case
over them (:func:`worst_case_tables`).

A defense that touches only a channel the attack cannot see (features, against an output-only attack)
is listed but not ranked: its student is the undefended one.

This module computes the tables and renders Markdown (tabulate); :mod:`reports.latex` and
:mod:`reports.html` render the same :class:`Table` objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import pandas as pd

from reports.cells import format_value
from reports.matched import at_cost, wide_gap
from reports.significance import ALPHA, FAMILY_TEXT, minimum_detectable_effect, verdicts
from reports.significance import METHOD_TEXT as TEST_TEXT
from reports.stats import Estimate, mean_ci, teacher_unit_of, unit_ci

#: teacher costs on test (dB) at which trade-off curves are compared
MATCHED_COSTS = (0.1, 0.5, 1.0)
FLOOR_DEFENSE = "noise_floor"
FLOOR_LABEL = "noise floor"
#: how the tables test, in words a report prints (one Holm family per ranked group: each group is its own
#: question, and the as-run group's many strengths should not dilute the matched-cost verdicts)
METHOD_TEXT = f"Significance: {TEST_TEXT[0].lower()}{TEST_TEXT[1:]} {FAMILY_TEXT}"
HEADERS = ("Rank", "Defense", "Acts on", "Teacher drop (dB)", "Worst image (dB)", "Fidelity (dB)",
           "Student drop (dB)", "vs floor", "vs top", "Student SSIM drop (%)", "Pairs")
#: decimals per estimate column (screen tables; the LaTeX tables print dB to 2 decimals, as papers do)
DECIMALS = {"teacher": 3, "student": 3, "ssim": 1, "fidelity": 1}
ONE_SEED = "†"
UNSEEN = "‡"
TRANSFER = "!"
PARTIAL = "~"
#: a reading taken across a wide bracket (reports.matched.wide_gap) or off a non-monotone curve on some pair
ROUGH = "≈"
#: the column a table gets where a row's defense traces (a watermark, bench.api.Defense.traces); absent elsewhere
TRACE_HEADER = "Traced (1 % FPR)"
TRACE_NOTE = ("Traced (1 % FPR): for a defense that marks its answers (a watermark), the seed pairs whose stolen "
              "student carries the mark at a 1 % false-positive rate (trace_p < 0.01: the owner's key against a "
              "null of wrong keys), the mean z of those students, and how many clean students (the reference and "
              "ground-truth students, which never saw the mark) the same test flags, on how many of the keys (a "
              "cell's key follows its student seed). The 1 % is a rate over keys: at one key every clean student "
              "gets nearly the same z (they share the direction in which any student departs from the teacher), "
              "so a key that flags one clean student flags most, and the keys are the independent units; – for "
              "defenses that do not trace and for matched-cost rows (a verdict is not read off a curve).")

Pair = tuple[int, int]  # (teacher seed, student seed)


@dataclass
class Row:
    rank: int | None
    defense: str
    channels: str
    sees: bool
    group: str
    teacher: Estimate
    student: Estimate
    ssim: Estimate
    pairs: list[Pair]
    config_id: str
    family_id: str
    defense_base: str
    budget_db: float | None = None
    worst: Estimate = field(default_factory=lambda: Estimate(math.nan, None, 0))
    fidelity: Estimate = field(default_factory=lambda: Estimate(math.nan, None, 0))
    #: the group's matched teacher cost (the teacher column shows it instead of a measured estimate)
    matched_cost: float | None = None
    failed: int = 0
    floor: bool = False
    #: pair -> student drop (what the significance tests compare)
    samples: dict[Pair, float] = field(default_factory=dict)
    #: Holm-adjusted p against each other ranked row of its group, by that row's ``config_id`` (one family:
    #: :data:`reports.significance.FAMILY_TEXT`); the verdict reads its comparisons from here
    p_vs: dict[str, float] = field(default_factory=dict)
    p_floor: float = math.nan
    above_floor: bool = False
    p_top: float = math.nan
    separable_from_top: bool = False
    top: bool = False
    #: marks after the defense name (TRANSFER: calib budget did not hold on test; PARTIAL: curve reached
    #: the matched cost on some pairs only)
    flags: str = ""
    #: a tracing defense's row (trace_* metrics): (pairs whose stolen student was traced, pairs), the z of
    #: those students, (clean students flagged, clean students), (keys with a clean student flagged, keys);
    #: None where the defense does not trace
    traced: tuple[int, int] | None = None
    trace_z: Estimate = field(default_factory=lambda: Estimate(math.nan, None, 0))
    clean_flagged: tuple[int, int] = (0, 0)
    clean_keys: tuple[int, int] = (0, 0)

    @property
    def seeds(self) -> list[int]:
        """The student seeds behind the row."""
        return sorted({s for _, s in self.pairs})

    @property
    def teacher_seeds(self) -> list[int]:
        return sorted({t for t, _ in self.pairs})

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
    #: mean PSNR of the reference (undefended) student over the table's cells
    ref_psnr: float = math.nan
    #: built from other tables (the worst case over attacks), not from cells of its own
    derived: bool = False
    #: pair -> the undefended students' PSNR every drop of the table is measured from (the mean of the
    #: reference and the noise-floor student where every pair has both, else the reference's)
    baseline: dict[Pair, float] = field(default_factory=dict)
    #: the baseline is the mean of two undefended students (True) or the reference student alone (False)
    replicated: bool = False
    #: minimum detectable effect of the table's groups (dB) and the student seeds it rests on
    mde: tuple[float, int] = (math.nan, 0)

    @property
    def title(self) -> str:
        access = f" ({self.attack_access})" if self.attack_access else ""
        return f"{self.task} · {self.attack}{access} · profile {self.profile}"

    def groups(self) -> list[tuple[str, list[Row]]]:
        """The rows in their ranked groups, in order."""
        return _by_group(self.rows)


def _by_group(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """Consecutive rows of one group, in order: [(group, rows)]."""
    out: list[tuple[str, list[Row]]] = []
    for r in rows:
        if not out or out[-1][0] != r.group:
            out.append((r.group, []))
        out[-1][1].append(r)
    return out


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _pair(t: object, s: object) -> Pair:
    return (0 if t is None or pd.isna(t) else int(t), int(s))


def pair_values(g: pd.DataFrame, column: str) -> dict[Pair, float]:
    """The finite values of ``column`` keyed by (teacher seed, student seed): the one definition of a sample."""
    if column not in g:
        return {}
    return {_pair(t, s): float(v) for t, s, v in zip(g["teacher_seed"], g["seed"], g[column]) if not pd.isna(v)}


def build_tables(cells: pd.DataFrame) -> list[Table]:
    """The leaderboard tables of a tidy cell table (:func:`reports.cells.tidy`)."""
    if cells.empty:
        return []
    done = cells[cells["status"] == "done"]
    failed = cells[cells["status"] != "done"]
    tables = []
    for (profile_id, task_id, attack_id), grp in done.groupby(["profile_id", "task_id", "attack_id"], sort=False):
        grp, baseline, replicated = replicated_drops(grp)
        first = grp.iloc[0]
        fail_here = failed[(failed["profile_id"] == profile_id) & (failed["task_id"] == task_id)
                           & (failed["attack_id"] == attack_id)]
        notes: list[str] = []
        floor = _config_rows(grp[grp["defense"] == FLOOR_DEFENSE], fail_here, "")
        groups = _matched_groups(grp, floor, notes)
        for budget in sorted(set(grp["budget_db"].dropna())):
            name = f"calibrated to {format_value(float(budget))} dB on calib"
            groups.append((name, _config_rows(grp[grp["budget_db"] == budget], fail_here, name)))
        as_run = grp[grp["budget_db"].isna()]
        if len(as_run):
            groups.append(("as run (each at its set strength)", _config_rows(as_run, fail_here,
                                                                              "as run (each at its set strength)")))
        rows: list[Row] = []
        for name, members in groups:
            members = [r for r in members if not r.floor]
            if not floor and not members:
                continue
            rows += [*_copy_floor(floor, name), *members]
        rows = _rank(rows)
        table = Table(profile=first["profile_label"], task=first["task_label"], attack=first["attack_label"],
                      attack_access=first["attack_access"] if isinstance(first["attack_access"], str) else None,
                      rows=rows, ids=(profile_id, task_id, attack_id), ref_psnr=mean_ci(grp["student_ref_psnr"]).mean,
                      baseline=baseline, replicated=replicated,
                      mde=_mde(grp))
        table.notes = _notes(table, grp, fail_here, has_floor=bool(floor)) + notes + remarks(table, grp)
        tables.append(table)
    tables.sort(key=lambda t: (t.profile, t.task, t.attack))
    return tables + worst_case_tables(tables)


def _mde(grp: pd.DataFrame) -> tuple[float, int]:
    """The table's minimum detectable effect, from its noise floor's drops against the reference alone (the
    spread of a difference of two students' chaos, as a defense-vs-floor difference is; against the
    replicated baseline the floor's own drop is half that difference)."""
    floor = grp[grp["defense"] == FLOOR_DEFENSE]
    column = "student_drop_ref_only_db" if "student_drop_ref_only_db" in floor else "student_drop_db"
    return minimum_detectable_effect(pair_values(floor, column)) if len(floor) else (math.nan, 0)


def replicated_drops(grp: pd.DataFrame) -> tuple[pd.DataFrame, dict[Pair, float], bool]:
    """The table's cells with their student drops measured from the mean of two undefended students trained
    with independent chaos, the reference and the noise-floor student of the same seed pair, where every pair
    of the table has a noise-floor cell (DESIGN: references carry no single student's luck; measured on claims
    grid v2: one lucky underwater reference added ~0.4 dB to every absolute drop). Paired differences between
    rows, and each row against the floor, are the same either way; absolute drops are not. Returns (cells,
    {pair: baseline PSNR}, replicated). Without a floor for every pair the reference alone is the baseline."""
    ref = {_pair(t, s): float(v) for t, s, v in zip(grp["teacher_seed"], grp["seed"], grp["student_ref_psnr"])
           if not pd.isna(v)}
    floor = grp[grp["defense"] == FLOOR_DEFENSE]
    f_psnr = floor.groupby([floor["teacher_seed"].fillna(0).astype(int), "seed"])["student_psnr"].mean().to_dict()
    if floor.empty or any(p not in f_psnr for p in ref):
        return grp, ref, False
    f_ssim = floor.groupby([floor["teacher_seed"].fillna(0).astype(int), "seed"])["student_ssim"].mean().to_dict()
    out = grp.copy()
    pairs = [_pair(t, s) for t, s in zip(out["teacher_seed"], out["seed"])]
    base = [(r + f_psnr[p]) / 2 for r, p in zip(out["student_ref_psnr"], pairs)]
    base_ssim = [(r + f_ssim[p]) / 2 for r, p in zip(out["student_ref_ssim"], pairs)]
    out["student_drop_ref_only_db"] = out["student_drop_db"]
    out["student_drop_db"] = [b - v for b, v in zip(base, out["student_psnr"])]
    out["student_ssim_drop_pct"] = [100.0 * (b - v) / max(b, 1e-12) for b, v in zip(base_ssim, out["student_ssim"])]
    # at a defense's identity strength its student is the reference: its drop from this baseline is not 0
    out["identity_drop_db"] = [b - r for b, r in zip(base, out["student_ref_psnr"])]
    out["identity_ssim_drop_pct"] = [100.0 * (b - r) / max(b, 1e-12)
                                     for b, r in zip(base_ssim, out["student_ref_ssim"])]
    return out, {p: (r + f_psnr[p]) / 2 for p, r in ref.items()}, True


#: the first table of a task with several attacks: each defense against the thief that does best against it
WORST = "worst case over attacks"
STRONGEST = WORST  # the name before claims grid v3


def worst_case_tables(tables: list[Table]) -> list[Table]:
    """Per (profile, task) with two or more attacks (adaptive variants included, each its own table): every
    defense judged by the thief that does best against it. Per seed pair, the worst case's student drop is
    the best undefended student over all attacks (each attack's table baseline) minus the best defended
    student over all attacks that faced the defense (baseline minus drop, at the group's matched cost), so an
    attack that also costs the thief undefended (an output filter) cannot pass for a strong one, and a defense
    that only stops a naive attacker is not credited. Each row names the attack that gave the best defended
    student on most pairs. Pairs the defense lacks under any of its attacks are left out (n shows it)."""
    import dataclasses
    from collections import Counter

    out = []
    by_task: dict[tuple[str, str], list[Table]] = {}
    for t in tables:
        if t.baseline and not t.derived:
            by_task.setdefault((t.profile, t.task), []).append(t)
    for (profile, task), mine in by_task.items():
        if len(mine) < 2:
            continue
        best_base: dict[Pair, float] = {}
        for t in mine:
            for pair, v in t.baseline.items():
                best_base[pair] = max(v, best_base.get(pair, -math.inf))
        rows: list[Row] = []
        fullest = sorted(mine, key=lambda t: -len(t.groups()))  # group order from the table that has most
        for group in dict.fromkeys(name for t in fullest for name, _ in t.groups()):
            faced: dict[str, list[tuple[Row, Table]]] = {}
            for t in mine:
                for r in t.rows:
                    if r.group == group and r.samples and (r.sees or r.floor):
                        faced.setdefault(r.config_id, []).append((r, t))
            for runs in faced.values():
                pairs = set.intersection(*(set(r.samples) for r, _ in runs)) & set(best_base)
                samples, winners = {}, Counter()
                for pair in sorted(pairs):
                    defended = {t.attack: t.baseline[pair] - r.samples[pair] for r, t in runs if pair in t.baseline}
                    if len(defended) < len(runs):
                        continue
                    attack = max(defended, key=lambda a: defended[a])
                    samples[pair] = best_base[pair] - defended[attack]
                    winners[attack] += 1
                if not samples:
                    continue
                first = runs[0][0]
                best = winners.most_common(1)[0][0]
                name = first.defense if first.floor else f"{first.defense} · best thief: {best}"
                rows.append(dataclasses.replace(first, defense=name, student=unit_ci(samples), samples=samples,
                                                pairs=sorted(samples), ssim=Estimate(math.nan, None, 0),
                                                rank=None, p_vs={}, flags=first.flags, traced=None))
        rows = _rank(rows)
        table = Table(profile=profile, task=task, attack=WORST, attack_access=None, rows=rows, derived=True)
        run = ", ".join(t.attack for t in mine)
        table.notes = [f"The worst case over the attacks run ({run}): per seed pair, the best undefended student "
                       "over all attacks minus the best defended student over the attacks that faced the defense; "
                       "each row names the attack that gave its best defended student on most pairs. vs floor: the "
                       f"noise floor's worst case, read the same way. {METHOD_TEXT}"]
        # the floor's worst case is a max over attacks, not one student's chaos: the table can see no more than
        # the least sensitive of the tables it is read from
        seen = [t.mde for t in mine if t.mde[1] >= 2]
        if seen:
            table.mde = max(seen)
            table.notes.append(_mde_text(*table.mde))
        out.append(table)
    return out


def _config_rows(grp: pd.DataFrame, failed: pd.DataFrame, group: str) -> list[Row]:
    """One row per defense configuration (a strength, or a calibrated budget) of these cells."""
    from bench.calibrate import transfer_warning

    rows = []
    for config_id, g in grp.groupby("config_id", sort=False):
        budget = g["budget_db"].iloc[0]
        label = g["defense_label"].iloc[0]
        is_floor = g["defense"].iloc[0] == FLOOR_DEFENSE
        strengths = sorted(set(g["strength"].dropna()))
        if not pd.isna(budget) and strengths:  # calibrated: the strength calibration found, per seed
            span = format_value(strengths[0]) + ("" if len(strengths) == 1 else f"–{format_value(strengths[-1])}")
            base = g["defense_base"].iloc[0]
            inner = f"{g['strength_param'].iloc[0]}={span}"
            label = f"{base[:-1]}, {inner})" if base.endswith(")") else f"{base} ({inner})"
        row = Row(
            rank=None, defense=FLOOR_LABEL if is_floor else label, channels=g["channels"].iloc[0],
            sees=bool(g["attack_sees_defense"].all()), group=group,
            budget_db=None if pd.isna(budget) else float(budget),
            # what honest users pay depends on the teacher seed alone: its interval is over teacher seeds
            teacher=unit_ci(pair_values(g, "teacher_drop_db"), unit=teacher_unit_of),
            student=unit_ci(pair_values(g, "student_drop_db")), ssim=unit_ci(pair_values(g, "student_ssim_drop_pct")),
            worst=unit_ci(pair_values(g, "worst_teacher_drop_db"), unit=teacher_unit_of),
            fidelity=unit_ci(pair_values(g, "served_fidelity_db"), unit=teacher_unit_of),
            pairs=sorted(_pair(t, s) for t, s in zip(g["teacher_seed"], g["seed"])),
            config_id=config_id, family_id=g["family_id"].iloc[0], defense_base=g["defense_base"].iloc[0],
            failed=int((failed["config_id"] == config_id).sum()), floor=is_floor,
            samples=pair_values(g, "student_drop_db"),
        )
        if row.budget_db is not None and row.teacher.n and transfer_warning(row.budget_db, row.teacher.mean):
            row.flags += TRANSFER
        if "traced" in g and g["traced"].notna().any():
            _set_trace(row, g[g["traced"].notna()])
        rows.append(row)
    return rows


def _set_trace(row: Row, g: pd.DataFrame) -> None:
    """A tracing defense's traceability on its row, from the cells' trace_* metrics (bench/row.py)."""
    from bench.api import TRACE_ALPHA

    row.traced = (int(g["traced"].astype(bool).sum()), len(g))
    row.trace_z = unit_ci(pair_values(g, "trace_z"))
    clean = {(who, pair): v for who in ("_ref", "_gt") for pair, v in pair_values(g, f"trace_p{who}").items()}
    row.clean_flagged = (sum(p < TRACE_ALPHA for p in clean.values()), len(clean))
    # the key follows the defense seed, the cell's student seed (defenses/watermark.py): the keys are the units
    keys = {pair[1] for _, pair in clean}
    flagged_keys = {pair[1] for (_, pair), p in clean.items() if p < TRACE_ALPHA}
    row.clean_keys = (len(flagged_keys), len(keys))


def trace_cell(row: Row) -> str:
    """The traceability column's text: 'traced/pairs · z mean ± ci · clean flagged/clean (keys flagged/keys)',
    or '–'."""
    if row.traced is None:
        return "–"
    return (f"{row.traced[0]}/{row.traced[1]} · z {format_estimate(row.trace_z, 1)} · clean "
            f"{row.clean_flagged[0]}/{row.clean_flagged[1]} ({row.clean_keys[0]}/{row.clean_keys[1]} keys)")


def _copy_floor(floor: list[Row], group: str) -> list[Row]:
    import dataclasses

    return [dataclasses.replace(r, group=group) for r in floor]


def _identity(name: str) -> float | None:
    """The strength at which the installed defense's answers are the teacher's (a curve's (0, 0) point)."""
    from bench.registry import DEFENSES

    try:
        cls = DEFENSES.get(name)
    except Exception:  # uninstalled or broken plugin: its curves simply get no anchor
        return None
    rng = getattr(cls, "strength_range", None)
    return float(rng[0]) if rng is not None and getattr(cls, "strength_identity", True) else None


def _matched_groups(grp: pd.DataFrame, floor: list[Row], notes: list[str]) -> list[tuple[str, list[Row]]]:
    """The matched-test-cost groups: each defense family's curve per seed pair, read at each cost."""
    swept = grp[grp["budget_db"].isna() & grp["strength"].notna() & grp["attack_sees_defense"].astype(bool)
                & (grp["defense"] != FLOOR_DEFENSE)]
    families = [(fid, f) for fid, f in swept.groupby("family_id", sort=False) if f["strength"].nunique() >= 2]
    if not families:
        return []
    groups: list[tuple[str, list[Row]]] = []
    for cost in MATCHED_COSTS:
        name = f"matched test cost {format_value(cost)} dB"
        rows = []
        for family_id, f in families:
            rows.append(_matched_row(family_id, f, cost, name, notes))
        groups.append((name, rows))
    return groups


def _matched_row(family_id: str, f: pd.DataFrame, cost: float, group: str, notes: list[str]) -> Row:
    defense = f["defense"].iloc[0]
    identity = _identity(defense)
    strengths = sorted(set(f["strength"]))
    base = f["defense_base"].iloc[0]
    label = f"{base} ({f['strength_param'].iloc[0]} {format_value(strengths[0])}–{format_value(strengths[-1])})"
    values: dict[str, dict[Pair, float]] = {"student": {}, "ssim": {}, "worst": {}}
    short, nonmonotone, pairs = [], 0, []  # short: the highest test cost of each pair that does not reach it
    rough = 0  # pairs whose reading crossed a wide bracket or a non-monotone curve
    nearest: dict[Pair, tuple[bool, float]] = {}  # a short pair: (stays below the cost, drop at its nearest point)
    for (t, s), c in f.groupby(["teacher_seed", "seed"], sort=True, dropna=False):
        pair = _pair(t, s)
        pairs.append(pair)
        at_identity = {"student": float(c["identity_drop_db"].iloc[0]) if "identity_drop_db" in c else 0.0,
                       "ssim": float(c["identity_ssim_drop_pct"].iloc[0]) if "identity_ssim_drop_pct" in c else 0.0,
                       "worst": 0.0}
        for what, column in (("student", "student_drop_db"), ("ssim", "student_ssim_drop_pct"),
                             ("worst", "worst_teacher_drop_db")):
            anchor = None if identity is None else (identity, 0.0, at_identity[what])
            points = list(zip(c["strength"], c["teacher_drop_db"], c[column]))
            m = at_cost(points, cost, anchor=anchor, smooth=True)
            if m.value is not None:
                values[what][pair] = m.value
                if what == "student" and (not m.monotone or (m.span or 0.0) > wide_gap(cost)):
                    rough += 1
            elif what == "student":
                short.append((min(c["teacher_drop_db"]), max(c["teacher_drop_db"])))
                # the pair's nearest point to the cost: its costliest if it stays below, its mildest if above
                side = max if max(c["teacher_drop_db"]) < cost else min
                nearest[pair] = (side is max, float(c.loc[side(c.index, key=lambda i: c.at[i, "teacher_drop_db"]),
                                                          column]))
            if what == "student" and not m.monotone:
                nonmonotone += 1
    reached = len(values["student"])
    row = Row(rank=None, defense=label, channels=f["channels"].iloc[0], sees=True, group=group,
              teacher=Estimate(cost, None, reached), student=unit_ci(values["student"]),
              ssim=unit_ci(values["ssim"]), worst=unit_ci(values["worst"], unit=teacher_unit_of),
              pairs=sorted(values["student"]), config_id=family_id, family_id=family_id, defense_base=base,
              matched_cost=cost, samples=values["student"])
    if reached < len(pairs):
        row.flags += PARTIAL
        why = _why_short(short, cost, "the others" if reached else "they")
        where = f"on {reached} of {len(pairs)} seed pairs" if reached else "on none of its seed pairs"
        notes.append(f"{PARTIAL} {label} reaches {format_value(cost)} dB of test cost {where} ({why}); "
                     + ("its row is over the pairs that reach it." if reached else "it is not ranked there.")
                     + _bounded(values["student"], nearest))
    if rough:
        row.flags += ROUGH
        notes.append(f"{ROUGH} {label} at {format_value(cost)} dB: on {rough} of {reached} seed pairs the reading "
                     f"crosses a bracket wider than {format_value(wide_gap(cost))} dB of teacher cost, or a curve "
                     "whose cost is not monotone in strength; bench sweep GRID --refine adds the strengths that split "
                     "them.")
    if nonmonotone and cost == MATCHED_COSTS[0]:
        notes.append(f"{label}: teacher cost on test is not monotone in strength on {nonmonotone} of {len(pairs)} "
                     "seed pairs; the first crossing of each cost is used.")
    return row


def _bounded(reached: dict[Pair, float], nearest: dict[Pair, tuple[bool, float]]) -> str:
    """Every pair kept, where all the pairs short of a cost miss it on one side: each counted at its nearest point
    (its costliest strength if it stays below the cost: a lower bound where drops grow with cost; its mildest if
    it costs more everywhere: an upper bound), so that the row does not rest on the pairs that survive."""
    sides = {below for below, _ in nearest.values()}
    if len(sides) != 1 or not nearest:
        return ""
    e = unit_ci({**reached, **{p: v for p, (_, v) in nearest.items()}})
    word, what = ("at least", "costliest point") if sides == {True} else ("at most", "mildest strength")
    who = f"Over all {e.n} pairs, those short of it counted at their {what}" if reached else \
        f"Every pair counted at its {what.replace('their', 'its')}"
    return f" {who}: {word} {format_estimate(e, 2)} dB (a bound, not an estimate; {e.units} student seeds)."


def _why_short(short: list[tuple[float, float]], cost: float, who: str) -> str:
    """Why some seed pairs have no value at a matched cost, from each one's (lowest, highest) test cost: its
    curve stays below the cost, or, without a zero-cost point (a retrained teacher), lies above it."""
    def span(values: list[float]) -> str:
        lo, hi = min(values), max(values)
        return f"{lo:.2f}" + ("" if hi - lo < 0.005 else f"–{hi:.2f}") + " dB"

    below = [hi for lo, hi in short if not lo > cost]
    above = [lo for lo, hi in short if lo > cost]
    parts = ([f"reach only {span(below)}"] if below else []) + (
        [f"cost more than that at every strength, {span(above)} at the least"] if above else [])
    return f"{who} " + " or ".join(parts)


def _rank(rows: list[Row]) -> list[Row]:
    """Significance and ranks within each group (one Holm family per group), rows ordered by rank."""
    ordered: list[Row] = []
    for _, members in _by_group(rows):
        ranked = [r for r in members if r.sees and not r.floor and r.student.n > 0]
        floor = next((r for r in members if r.floor), None)
        rest = [r for r in members if r not in ranked and not r.floor]
        ordered += ([floor] if floor is not None else []) + _apply_verdicts(ranked, floor) + sorted(
            rest, key=lambda r: r.defense)
    return ordered


def _apply_verdicts(ranked: list[Row], floor: Row | None) -> list[Row]:
    """Set ranks and the vs-top marks (and, with a floor, the vs-floor marks) of one group's ranked rows
    from :func:`verdicts`; returns them in rank order."""
    entries: list[tuple[Hashable, dict[Pair, float]]] = [(id(r), r.samples) for r in ranked]
    if floor is not None:
        entries.append((id(floor), floor.samples))
    result = verdicts([entries], floor=id(floor) if floor is not None else None)
    top = max(ranked, key=lambda x: _key(x.student.mean)) if ranked else None
    by_id = {id(r): r for r in ranked}
    for r in ranked:
        v = result[(0, id(r))]
        r.p_vs = {by_id[k].config_id: p for k, p in v.p_vs.items()}
        if floor is not None:
            r.p_floor, r.above_floor = v.p_floor, v.above_floor
        r.rank, r.p_top, r.separable_from_top, r.top = v.rank, v.p_top, v.separable_from_top, r is top
    return sorted(ranked, key=lambda r: (r.rank, -_key(r.student.mean), r.defense))


def _key(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def _notes(table: Table, grp: pd.DataFrame, failed: pd.DataFrame, *, has_floor: bool) -> list[str]:
    from bench.remarks import teacher_remarks

    notes = []
    ref = mean_ci(grp["teacher_psnr"]).mean, mean_ci(grp["student_ref_psnr"]).mean
    gt = mean_ci(grp["student_gt_psnr"]).mean if "student_gt_psnr" in grp else math.nan
    inp = mean_ci(grp["input_psnr"]).mean if "input_psnr" in grp else math.nan
    if not any(math.isnan(v) for v in ref):
        also = "" if math.isnan(gt) else f", the attack trained on ground truth instead of answers {gt:.2f} dB"
        given = "" if math.isnan(inp) else f"Input {inp:.2f} dB PSNR, u"
        baseline = ("the mean of the reference and the noise-floor student of each seed pair (two undefended students "
                    "with independent chaos, so no single student's luck shifts every drop)" if table.replicated
                    else "the reference student of each seed pair")
        notes.append(f"{given or 'U'}ndefended teacher {ref[0]:.2f} dB PSNR, reference student {ref[1]:.2f} dB{also} "
                     f"(means over this table's cells); student drops are paired differences from {baseline}.")
        means = {"input_psnr": None if math.isnan(inp) else inp, "teacher_psnr": ref[0], "student_ref_psnr": ref[1]}
        notes += [r[0].upper() + r[1:] for r in teacher_remarks(means)]
    pairs = sorted({_pair(t, s) for t, s in zip(grp["teacher_seed"], grp["seed"])})
    n_t, n_s = len({t for t, _ in pairs}), len({s for _, s in pairs})
    notes.append(f"Intervals: 95 % Student t over student seeds, each the mean over its teacher seeds (the "
                 f"design is crossed, so student seeds are the independent units); this table has {n_s} student "
                 f"seed(s) ({_seed_list(sorted({s for _, s in pairs}))}) and {n_t} teacher seed(s) "
                 f"({_seed_list(sorted({t for t, _ in pairs}))}), which are treated as fixed. The teacher's "
                 "side (teacher drop, worst image, fidelity) does not depend on the student seed: its interval is "
                 "over teacher seeds (none with one). Pairs column: pairs behind the row (student x teacher seeds).")
    if table.mde[1] >= 2:
        notes.append(_mde_text(*table.mde))
    if has_floor:
        notes.append(f"{METHOD_TEXT} vs floor: the row's drops against the noise floor's (above: significantly "
                     "larger; below: significantly smaller, the students gain; n.s.: not separable from training "
                     "noise). vs top: against the group's highest row. "
                     "Rows that cannot be separated share a rank.")
    else:
        notes.append("No noise floor in this table: add noise_floor to the grid's defenses. Without it no drop can "
                     "be told from the chaos of training; ranks still come from paired tests between rows.")
    if any(r.matched_cost is not None for r in table.rows):
        notes.append("Matched test cost: each defense's trade-off curve (teacher drop on test against student drop, "
                     "one per seed pair, through its strengths) read at that teacher cost by interpolation (monotone "
                     "cubic, PCHIP, where the pair's curve is monotone, else linear on the first crossing segment), "
                     "never extrapolated. Worst image: the largest per-image teacher drop on test. Fidelity: PSNR "
                     "of the served answers against the undefended teacher's.")
    if any(r.traced is not None for r in table.rows):
        notes.append(TRACE_NOTE)
    if any(TRANSFER in r.flags for r in table.rows):
        notes.append(f"{TRANSFER} the budget set on calib did not hold on test (cost off by more than 2x or 0.1 "
                     "dB): compare this row at matched test cost instead.")
    if any(r.student.n == 1 for r in table.rows):
        notes.append(f"{ONE_SEED} one seed pair: no confidence interval (run more seeds).")
    unseen = [r for r in table.rows if not r.sees]
    if unseen:
        notes.append(f"{UNSEEN} acts only on a channel this attack cannot see ({table.attack_access or 'its access'}"
                     "): the student is the undefended one, so the row is not ranked.")
    listed = [r for r in table.rows if r.matched_cost is None]
    all_pairs = sorted({p for r in listed for p in r.pairs})
    seen: set[str] = set()
    for r in listed:
        missing = [p for p in all_pairs if p not in r.pairs]
        key = f"{r.defense} ({r.budget_text})"
        if missing and key not in seen:
            seen.add(key)
            notes.append(f"{key}: seed pair(s) {', '.join(f'{t}/{s}' for t, s in missing)} (teacher/student) "
                         f"missing; has {len(r.pairs)}.")
    if len(failed):
        by_label = failed.groupby("defense_label", sort=True).size()
        listed_failed = ", ".join(f"{lab} ({n})" for lab, n in by_label.items())
        notes.append(f"Failed cells, not in the table: {listed_failed}; see Failed cells.")
    return notes


def _mde_text(mde: float, units: int) -> str:
    return (f"Minimum detectable effect: {mde:.2f} dB (80 % power, alpha 0.05 before correction, from the noise "
            f"floor's spread over {units} student seeds; a defense whose drops spread more than the floor's needs "
            "more): a difference below it cannot be told from training noise by this table; 'n.s.' means not "
            "separable, not equal.")


def remarks(table: Table, grp: pd.DataFrame) -> list[str]:
    """Notes on results that look wrong and are not (the words of :mod:`bench.remarks`, as ``bench run``
    prints them for one cell): ground-truth students below the distilled reference, and defended students
    that beat the reference, significantly (a finding) or not (training noise)."""
    from bench.remarks import GAIN_WHY, GT_BELOW_WHY, MIN_DB

    out = []
    if "student_gt_psnr" in grp and "student_ref_psnr" in grp:
        # the reference and ground-truth students are shared by every defense of a seed pair: one value per pair
        per_pair = (grp.assign(_pair=[_pair(t, s) for t, s in zip(grp["teacher_seed"], grp["seed"])],
                               _gap=grp["student_ref_psnr"] - grp["student_gt_psnr"])
                    .dropna(subset=["_gap"]).groupby("_pair")["_gap"].mean())
        below = per_pair[per_pair >= MIN_DB]
        if len(below):
            out.append(f"Ground-truth student below the distilled reference in {len(below)} of {len(per_pair)} seed "
                       f"pair(s) (by {below.mean():.2f} dB on average): {GT_BELOW_WHY}.")
    gains, noise = [], []
    for r in table.rows:
        if r.floor or r.rank is None or not r.student.n or r.student.mean > -MIN_DB:
            continue
        if not math.isnan(r.p_floor):
            significant, why = r.p_floor < ALPHA and not r.above_floor, f"below the noise floor, p={_p(r.p_floor)}"
        else:
            significant, why = r.student.ci is not None and r.student.high < 0, "its 95 % interval is below 0"
        where = r.defense if r.group.startswith("as run") else f"{r.defense} at {r.group}"
        if significant:
            gains.append(f"{where}: the defended students scored {-r.student.mean:.3f} dB above the reference, more "
                         f"than training noise explains ({why}): {GAIN_WHY}.")
        else:
            noise.append(where)
    if noise:
        floor = "the noise floor" if any(r.floor for r in table.rows) else "zero (no noise floor in this table)"
        out.append(f"Negative mean student drop (the defended student scored higher) not separable from {floor}: "
                   f"{'; '.join(noise)}. That is the noise of training, not a gain for the attacker; more seeds "
                   "tell.")
    return out + gains


# ------------------------------------------------------------------------------------------ rendering
def format_estimate(e: Estimate, decimals: int, pm: str = " ± ") -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "n/a"
    text = _fixed(e.mean, decimals)
    return text if e.ci is None else f"{text}{pm}{_fixed(e.ci, decimals)}"


def _fixed(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def significance_cells(row: Row) -> tuple[str, str]:
    """(vs floor, vs top) as table text: 'above p=…' / 'n.s. p=…' / '–'."""
    if row.floor or row.rank is None:
        return "–", "–"
    if math.isnan(row.p_floor):
        floor = "–"
    else:
        # significant either way: above the floor (the defense hurts students) or below it (it helps them)
        word = "above" if row.above_floor else ("below" if row.p_floor < ALPHA else "n.s.")
        floor = f"{word} p={_p(row.p_floor)}"
    if row.top:
        top = "top"
    elif math.isnan(row.p_top):
        top = "–"
    else:
        top = f"{'below' if row.separable_from_top else 'n.s.'} p={_p(row.p_top)}"
    return floor, top


def row_cells(row: Row, pm: str = " ± ", escape: Callable[[str], str] = str,
              decimals: dict[str, int] | None = None) -> list[str]:
    """One table row as display strings in ``HEADERS`` order (``escape`` is applied to names, never to
    numbers)."""
    d = {**DECIMALS, **(decimals or {})}
    acts = row.channels if row.sees else f"{row.channels} {UNSEEN}"
    n = len(row.pairs)
    pairs = f"{n} ({len(row.seeds)}×{len(row.teacher_seeds)})" + (f" {ONE_SEED}" if n == 1 else "")
    if row.floor:
        rank = "floor"
    else:
        rank = "–" if row.rank is None else str(row.rank)
    teacher = (f"{format_value(row.matched_cost)} (matched)" if row.matched_cost is not None
               else format_estimate(row.teacher, d["teacher"], pm))
    floor, top = significance_cells(row)
    name = row.defense + (f" {row.flags}" if row.flags else "")
    return [
        rank, escape(name), escape(acts), teacher, format_estimate(row.worst, d["teacher"], pm),
        format_estimate(row.fidelity, d["fidelity"], pm) if row.matched_cost is None else "–",
        format_estimate(row.student, d["student"], pm) if row.student.n else "not reached",
        floor, top, format_estimate(row.ssim, d["ssim"], pm), pairs,
    ]


def md_escape(text: str) -> str:
    """Markdown-safe text: table pipes, emphasis, HTML and link/image syntax are shown literally."""
    for ch in ("\\", "|", "*", "_", "`", "[", "]", "<", ">", "!"):
        text = text.replace(ch, "\\" + ch)
    return text


def table_markdown(table: Table) -> str:
    from tabulate import tabulate

    parts = [f"## {md_escape(table.title)}\n"]
    tracing = any(r.traced is not None for r in table.rows)  # the column only where a defense traces
    for name, rows in table.groups():
        body = [row_cells(r, escape=md_escape) + ([trace_cell(r)] if tracing else []) for r in rows]
        text = tabulate(body, headers=HEADERS + ((TRACE_HEADER,) if tracing else ()), tablefmt="github",
                        disable_numparse=True,
                        colalign=("right", "left", "left", "right", "right", "right", "right", "left", "left",
                                  "right", "right") + (("left",) if tracing else ()))
        parts.append(f"### {md_escape(name)}\n\n{text}\n")
    notes = "".join(f"\n- {md_escape(n)}" for n in table.notes)
    return "\n".join(parts) + f"{notes}\n"


def intro(n_done: int, n_failed: int, store: str) -> str:
    return (f"Store {store}: {n_done} finished cell(s), {n_failed} failed. Per task and attack, defenses ranked "
            "by student PSNR drop (what the thief loses) at equal teacher cost (what honest users lose): first at "
            "matched teacher costs measured on the test split (each defense's trade-off curve read at the cost), "
            "then calibrated on the calib split (with the cost that had on test), then each configuration as run. "
            "Mean ± 95 % confidence interval over (teacher seed, student seed) pairs (Student t). Teacher drop: "
            "teacher − served PSNR on the test split. Student drop: reference student − defended student PSNR, "
            "the two students paired (same initialisation, queries, data order and budget). The noise floor row is "
            "a student trained on its own from invisibly perturbed answers: drops inside its spread are not "
            "separable from the chaos of training.")


def markdown(tables: list[Table], messages: list[str], failed: pd.DataFrame, store: str, n_done: int) -> str:
    parts = ["# Leaderboard\n", md_escape(intro(n_done, len(failed), store)) + "\n"]
    if messages:
        parts.append("## What is missing\n\n" + "".join(f"- {md_escape(m)}\n" for m in messages))
    parts += [table_markdown(t) for t in tables]
    if len(failed):
        from tabulate import tabulate

        body = [[md_escape(c) for c in (r["task_label"], r["defense_label"], r["attack_label"], r["profile_label"],
                                         str(r["seed"]), _one_line(r["error"]))] for _, r in failed.iterrows()]
        parts.append("## Failed cells\n\n" + tabulate(body, headers=("Task", "Defense", "Attack", "Profile", "Seed",
                                                                     "Error"), tablefmt="github",
                                                        disable_numparse=True) + "\n")
    return "\n".join(parts)


def _one_line(error: object) -> str:
    if not isinstance(error, str) or not error:
        return "(no error recorded)"
    return error.strip().splitlines()[0]
