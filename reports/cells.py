"""The store as a tidy table: one row per cell, with the labels and group ids every report uses.

Reads ``<home>/results.sqlite`` through :meth:`bench.store.Store.dataframe` and adds:

- ``*_id`` columns: canonical JSON of what identifies a task, attack, profile or defense configuration
  (name, version, params; a task's also the teacher and student models when the user brought their own),
  so cells are grouped by what they ran, not by their names alone;
- ``*_label`` columns: the name plus the parameters that vary in this store (``sr (scale=4)``,
  ``asvp (h=1.5)``), so a reader tells configurations apart without reading JSON;
- ``budget_db`` (the teacher budget the defense was calibrated to; NaN when it ran at a set strength),
  ``strength_param`` / ``strength`` (the defense's strength parameter and its value, where the defense
  is installed and declares one), ``family_id`` (a defense with every parameter but its strength fixed:
  one curve of the trade-off plot) and ``config_id`` (one row of a leaderboard: the family at one
  strength, or at one budget when calibrated, where the strength may differ between seeds);
- ``attack_sees_defense``: False where the attack cannot see the channel the defense touches (a
  feature-only defense against an output-only attack), so the student is the undefended one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import BenchError
from bench.cache import canonical_json
from bench.params import format_value as params_format_value
from bench.params import label as params_label
from bench.profiles import CALIB_FIELDS

#: per-cell metrics the reports aggregate (all in the store's ``metrics`` JSON)
DROPS = ("teacher_drop_db", "student_drop_db", "student_ssim_drop_pct")
#: the teacher's cost beyond the mean drop: the worst test image's drop, served-vs-teacher PSNR, and the cost on the
#: attacker's queries (what the thief pays beside the honest users' teacher_drop_db; NaN in rows from before it)
COSTS = ("worst_teacher_drop_db", "served_fidelity_db", "attacker_query_drop_db")
#: per-image values (lists in the store, JSON lists in the CSV), in the test pool's order (the attacker's
#: queries' in theirs)
PER_IMAGE = ("teacher_drop_db_per_image", "teacher_psnr_per_image", "served_psnr_per_image",
             "served_fidelity_db_per_image", "attacker_query_drop_db_per_image")
SCORES = tuple(f"{who}_{m}" for who in ("input", "teacher", "served", "student_ref", "student", "student_gt")
               for m in ("psnr", "ssim"))
TIMINGS = ("data_s", "teacher_s", "defense_fit_s", "reference_student_s", "student_s", "score_s")


def open_store(home: Path | str) -> Any:
    """The store at ``home``; a clear error (not a new empty store) where there is none."""
    from bench.store import Store

    home = Path(home)
    if not (home / "results.sqlite").is_file():
        raise BenchError(f"no results store in {home} (no results.sqlite there); run bench run or bench sweep "
                         "first, or point --home at a store.")
    try:
        store = Store(home)
    except BenchError as exc:
        if "read-only" not in str(exc) and "cannot create" not in str(exc):
            raise
        store = Store(home, readonly=True)  # someone else's store, or a read-only disk: report it as it is
    store.check()  # a damaged store is reported as damaged, with recovery advice, not as results
    return store


# one way to write a configuration, shared with the sweep's progress and summary (bench.params)
format_value = params_format_value
label = params_label


def _component(config: Any, part: str) -> dict[str, Any]:
    c = (config or {}).get(part) if isinstance(config, dict) else None
    return c if isinstance(c, dict) else {}


def _varying_keys(identities: list[dict[str, Any]]) -> list[str]:
    """Keys (params, plus ``version``) whose values differ among these identities of one plugin name."""
    flat = [{**(i.get("params") or {}), "version": i.get("version")} for i in identities]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({canonical_json(f.get(k, "<unset>")) for f in flat}) > 1]


def _vary_by_name(names: list[str], ids: list[dict[str, Any]], done: list[bool]) -> dict[tuple[str, bool], list[str]]:
    """Varying keys per (name, is the cell done): finished cells are labelled by what varies among the
    finished cells of that name, so a failed cell's odd parameter does not lengthen every label; failed
    cells by what varies among all cells, so they stay distinguishable."""
    out = {}
    for n in set(names):
        every = [i for m, i in zip(names, ids) if m == n]
        finished = [i for m, i, ok in zip(names, ids, done) if m == n and ok]
        out[(n, True)] = _varying_keys(finished)
        out[(n, False)] = _varying_keys(every)
    return out


def _strength_param(name: str) -> str | None:
    """The defense's declared strength parameter, where the defense is installed (None otherwise)."""
    from bench.registry import DEFENSES

    try:
        return getattr(DEFENSES.get(name), "strength", None)
    except Exception:  # a plugin since uninstalled or broken: the report still works, without curves
        return None


def _attack_access(name: str) -> str | None:
    from bench.registry import ATTACKS

    try:
        return getattr(ATTACKS.get(name), "access", None)
    except Exception:
        return None


def tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Store rows (as :meth:`Store.dataframe` gives them) -> the tidy per-cell table described above."""
    if raw.empty:
        return pd.DataFrame(columns=["key", "status", "error", "task", "defense", "attack", "seed", "profile"])
    df = raw.copy()
    for col in (*DROPS, *COSTS, *SCORES, *TIMINGS, "queries_used", "wall_s"):
        if col not in df:
            df[col] = np.nan
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in ("channels", "error"):
        if col not in df:
            df[col] = None
    if "student_shortcut" not in df:
        df["student_shortcut"] = np.nan

    cfg = df["config"]
    is_done = (df["status"] == "done").tolist()
    parts = {p: [_component(c, p) for c in cfg] for p in ("task", "defense", "attack")}
    profiles = [c.get("profile") if isinstance(c, dict) and isinstance(c.get("profile"), dict) else {}
                for c in cfg]
    # the calib fields are in calibrated cells' keys only (an uncalibrated cell never reads the calib pool):
    # they belong to a calibrated row's configuration, not to the profile, which would otherwise split in two
    calib = [{k: p[k] for k in CALIB_FIELDS if k in p} for p in profiles]
    profiles = [{k: v for k, v in p.items() if k not in CALIB_FIELDS} for p in profiles]
    df["teacher_seed"] = [c.get("teacher_seed") if isinstance(c, dict) else None for c in cfg]
    budget = [c.get("budget_db") if isinstance(c, dict) else None for c in cfg]
    if "budget" in df:  # the store's own column, where a sweep fills it
        budget = [b if b is not None else (None if pd.isna(s) else s) for b, s in zip(budget, df["budget"])]
    df["budget_db"] = pd.to_numeric(pd.Series(budget, index=df.index, dtype=object), errors="coerce")

    # the models a cell ran on belong to its task: cells on your own teacher are not pooled with the reference
    models = [{"teacher": _model_label(c, "teacher_model"), "student": _model_label(c, "student_model")} for c in cfg]
    # and so do everything else their keys hold that changes trained models: the numerics (device, threads,
    # precision), the teacher's where it was shared, and the data's version; cells that differ in any of
    # them are other experiments, never seeds of one (DESIGN: one identity, from key to report)
    numerics = [_numerics(c) for c in cfg]
    df["numerics"] = [canonical_json(n) if n else None for n in numerics]
    models = [{**m, **n} for m, n in zip(models, numerics)]
    df["teacher_model"] = [m["teacher"] for m in models]
    df["student_model"] = [m["student"] for m in models]
    for part in ("task", "defense", "attack"):
        names = df[part].tolist()
        df[f"{part}_params"] = [canonical_json(i.get("params") or {}) for i in parts[part]]
        ids = parts[part] if part != "task" else [{**i, "params": {**(i.get("params") or {}), **m}}
                                                   for i, m in zip(parts[part], models)]
        flat = [{**(i.get("params") or {}), "version": i.get("version")} for i in ids]
        df[f"{part}_id"] = [canonical_json({"name": n, **f}) for n, f in zip(names, flat)]
        vary = _vary_by_name(names, ids, is_done)
        shown = [[(k, f.get(k)) for k in vary[(n, ok)]] for n, f, ok in zip(names, flat, is_done)]
        if part != "defense":
            df[f"{part}_label"] = [label(n, items) for n, items in zip(names, shown)]
            continue
        strength = {n: _strength_param(n) for n in set(names)}
        sp = [strength[n] for n in names]
        df["strength_param"] = sp
        # a calibrated cell's config holds its budget, not its strength: that is in its metrics
        calibrated = df["strength"].tolist() if "strength" in df else [np.nan] * len(df)
        df["strength"] = [(_number(f.get(s)) if s in f else _number(c)) if s else np.nan
                          for f, s, c in zip(flat, sp, calibrated)]
        fixed = [[(k, v) for k, v in items if k != s] for items, s in zip(shown, sp)]
        df["defense_base"] = [label(n, items) for n, items in zip(names, fixed)]
        df["defense_label"] = [label(n, items + ([(s, f[s])] if s in f else []))
                               for n, items, f, s in zip(names, fixed, flat, sp)]
        family = [{"name": n, **{k: v for k, v in f.items() if k != s}} for n, f, s in zip(names, flat, sp)]
        df["family_id"] = [canonical_json(f) for f in family]
        # calibrated cells of one family and budget are one configuration, whatever strength each seed got
        df["config_id"] = [canonical_json([fam, float(b), cal]) if not pd.isna(b)
                           else canonical_json([{"name": n, **f}, None])
                           for fam, b, cal, n, f in zip(family, df["budget_db"], calib, names, flat)]
    access = {n: _attack_access(n) for n in set(df["attack"])}
    df["attack_access"] = [access[n] for n in df["attack"]]

    # a profile is compared only with itself: label the overrides where one name has several settings
    df["profile_id"] = [canonical_json({"name": n, **p}) for n, p in zip(df["profile"], profiles)]
    pvary = _vary_by_name(df["profile"].tolist(), [{"params": p} for p in profiles], is_done)
    df["profile_label"] = [label(n, [(k, p.get(k)) for k in pvary[(n, ok)]])
                           for n, p, ok in zip(df["profile"], profiles, is_done)]

    df["channels"] = [" + ".join(c.split(",")) if isinstance(c, str) and c else "none" for c in df["channels"]]
    df["attack_sees_defense"] = [_sees(ch, sc) for ch, sc in zip(df["channels"], df["student_shortcut"])]
    df["calibrated"] = df["budget_db"].notna()
    return df


def _numerics(config: Any) -> dict[str, Any]:
    """What a cell's key holds besides its plugins' parameters, flat for labels: ``threads``, ``device``,
    ``precision``, ``gpu``; ``teacher_threads`` (the cell's own, or a shared teacher's:
    :func:`bench.pipeline.share_teacher`); and ``data_version`` (the data fingerprint's first 12 hex digits) for
    data read from disk."""
    if not isinstance(config, dict):
        return {}
    out = {k: v for k, v in (config.get("numerics") or {}).items() if k in ("device", "threads", "precision", "gpu")}
    if out:  # the teacher's own thread count: the cell's, unless the teacher was shared (bench.pipeline.share_teacher)
        out["teacher_threads"] = config.get("teacher_threads") or out.get("threads")
    fingerprint = _component(config, "task").get("data_fingerprint")
    if fingerprint:
        out["data_version"] = str(fingerprint)[:12]
    return out


def _model_label(config: Any, key: str) -> str:
    """``reference`` (the suite's own architecture), or the user's factory (and weights hash) from
    ``bench run --teacher/--student``."""
    m = config.get(key) if isinstance(config, dict) else None
    if not isinstance(m, dict):
        return "reference"
    weights = m.get("weights")
    return str(m.get("factory")) + (f"@{str(weights)[:8]}" if weights else "")


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan


def _sees(channels: str, shortcut: Any) -> bool:
    """Whether the attack saw what the defense changes. The pipeline reuses the reference student exactly
    when it did not (``student_shortcut``); a defense touching nothing (``none``) is the reference itself."""
    if channels == "none":
        return True
    return not (isinstance(shortcut, (bool, np.bool_)) and bool(shortcut))


def load(home: Path | str, grid: Path | str | None = None) -> pd.DataFrame:
    """The tidy per-cell table of the store at ``home``; ``grid``: of that grid file's cells only (filtered before
    the labels are made, so they name what differs inside the grid, not across the store)."""
    raw = open_store(home).dataframe()
    cells = tidy(only_grid(raw, grid) if grid is not None else raw)
    refuse_mixed_code(cells, str(home), "re-run bench sweep (it recomputes the cells whose code changed) before "
                                        "reporting")
    return cells


def _apart_from_threads(config: dict) -> str:
    """A cell's configuration without the torch thread counts a sweep fills in (its own, and a shared
    teacher's): what a grid file names. The device and precision stay."""
    kept = {k: v for k, v in config.items() if k not in ("numerics", "teacher_threads")}
    kept["numerics"] = {k: v for k, v in (config.get("numerics") or {}).items() if k != "threads"}
    return canonical_json(kept)


def only_grid(cells: pd.DataFrame, grid: Path | str) -> pd.DataFrame:
    """The cells of the grid file ``grid``: a store that serves several grids reports one of them alone. A cell
    belongs to the grid when its configuration is one of the grid's, whatever thread count the sweep that ran
    it chose (a key holds it, the file does not: ``--n-jobs 2`` runs one thread per job); cells at other
    thread counts stay apart in the report's groups as ever. Cells a ``--refine`` round added are not in the
    file. One-line errors for a source without configurations (a cells.csv) and for no match."""
    from bench.cell import resolve
    from bench.grid import load_file, make_grid

    wanted = {_apart_from_threads(resolve(spec).config()) for spec in make_grid(load_file(grid)).specs()}
    if cells.empty:
        mine = cells
    elif "config" not in cells:
        raise BenchError(f"--grid {grid}: this source holds no cell configurations (a cells.csv); read the store "
                         "with --home instead.")
    else:
        mine = cells[[isinstance(c, dict) and _apart_from_threads(c) in wanted for c in cells["config"]]]
    if mine.empty:
        raise BenchError(f"--grid {grid}: none of its {len(wanted)} cells is in this store; run `bench sweep {grid}` "
                         "with this --home first, or leave --grid out to report every cell.")
    return mine


#: columns of the per-cell CSV, in order (the rest of a cell's metrics follow them)
CSV_FIRST = ("key", "status", "error", "profile", "profile_label", "task", "task_label", "task_params",
             "teacher_model", "student_model",
             "defense", "defense_label", "defense_params", "channels", "budget_db", "strength_param",
             "strength", "attack", "attack_label", "attack_params", "attack_access", "attack_sees_defense",
             "seed", "teacher_seed", *DROPS, *COSTS, *SCORES, "queries_used", "wall_s", *TIMINGS, *PER_IMAGE)
_CSV_DROP = ("config", "traceback", "task_id", "defense_id", "attack_id", "profile_id", "family_id", "config_id",
             "defense_base", "budget")


def csv_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """Every cell (done and failed) as one tidy CSV row: scalar columns only, parameters as JSON."""
    if cells.empty:
        return pd.DataFrame(columns=list(CSV_FIRST))
    first = [c for c in CSV_FIRST if c in cells]
    rest = sorted(c for c in cells if c not in first and c not in _CSV_DROP)
    out = cells[first + rest].copy()
    for col in PER_IMAGE:
        if col in out:
            out[col] = [json.dumps(v) if isinstance(v, list) else None for v in out[col]]
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = [spreadsheet_safe(v) for v in out[col]]
    return out.sort_values(["profile", "task", "attack", "defense", "teacher_seed", "seed"], kind="stable")


#: a cell a spreadsheet reads as a formula starts with one of these (OWASP's CSV injection list)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value``, with a leading apostrophe where it is text a spreadsheet would evaluate (a factory path, label
    or file name starting with ``=``, ``+``, ``-`` or ``@``); numbers written as text stay as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def from_csv(path: Path | str | Sequence[Path | str], grid: Path | str | None = None) -> pd.DataFrame:
    """The tidy per-cell table of a report's ``cells.csv`` (as :func:`csv_frame` wrote it), so that a committed
    report can be re-read without its store (``bench verdict --cells``, ``bench report --cells``). Each row
    becomes the store row it was made from (its config rebuilt from the task, defense and attack parameters, its
    numerics and the teacher it shared) and goes through :func:`tidy`, so ids and labels are made by the same
    code as from a store.

    Several files (a grid committed in slices, one per session, or two grids that share cells) are read as one
    table: a cell (a key) in more than one file is kept once, and must have the same results in each (different
    results for one configuration and seed pair mean files from different stores that disagree).
    A key is a configuration and seed pair, not its code: where one copy records its code and the other is from
    before cells.csv recorded code (``docs/results/claims-baselines/cells.csv``'s underwater rows), the sweep
    ran it again for want of a code, and the recorded copy is kept.

    ``grid``: only the cells of that grid file, matched by :func:`plan_identity` (a file that holds another
    grid's cells too, e.g. ``docs/results/claims-baselines/cells.csv``, gives only the ones this grid names)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    rows: dict[str, dict[str, Any]] = {}
    where: dict[str, Path | str] = {}
    for one in paths:
        for row in csv_rows(one):
            key = row["key"]
            if key in rows:
                recorded = [isinstance(r.get("code"), str) for r in (rows[key], row)]
                if recorded == [False, True]:  # the older, unrecorded copy gives way
                    rows[key], where[key] = row, one
                elif _results(rows[key]) != _results(row) and recorded != [True, False]:
                    raise BenchError(f"cell {key} is in {where[key]} and in {one} with different results; read "
                                     "files from one store (or drop one of them).")
                continue
            rows[key], where[key] = row, one
    kept = list(rows.values())
    if grid is not None:
        plan = {identity for identity, _ in grid_plan(grid)}
        kept = [row for row in kept if plan_identity(row["config"], row["profile"]) in plan]
        if not kept:
            raise BenchError(f"--grid {grid}: none of its {len(plan)} cells is in "
                             f"{', '.join(str(one) for one in paths)}; pass the slices of that grid, or leave "
                             "--grid out to read every cell.")
    cells = tidy(pd.DataFrame(kept))
    refuse_mixed_code(cells, ", ".join(str(one) for one in paths),
                      "re-run the older slice (bench sweep) and commit it", where)
    refuse_two_teachers(cells, where)
    return cells


def refuse_two_teachers(cells: pd.DataFrame, where: dict[str, Path | str]) -> None:
    """A one-line error where files give one teacher (task, teacher seed, numerics) two different test scores:
    the same key trained two different teachers (measured: claims v3's derain slices 1-2 and 3, from sessions
    on machines whose CPUs gave teacher seed 0 28.1586 and 27.6251 dB), so their cells are not paired by seed
    and pooling them would compare defenses served by different models."""
    if cells.empty or "teacher_psnr" not in cells:
        return
    done = cells[(cells["status"] == "done") & cells["teacher_psnr"].notna()]
    same = [c for c in ("profile_id", "task_id", "teacher_seed") if c in done]  # task_id holds models, numerics
    for _, g in done.groupby(same, sort=False, dropna=False):
        scores = g["teacher_psnr"].round(4)
        if scores.nunique() > 1:
            first = g.iloc[0]
            files = {score: ", ".join(sorted({str(where[k]) for k in g.loc[scores == score, "key"]}))
                     for score in sorted(scores.unique())}
            found = "; ".join(f"{score:.4f} dB in {names}" for score, names in files.items())
            raise BenchError(f"{first['task_label']} teacher seed {first['teacher_seed']}: the files hold cells of two "
                             f"different teachers ({found}); one key trained two teachers (another machine's CPU or "
                             "libraries), so their cells are not paired: re-run one file's cells on the other's store "
                             "(bench sweep without it in --skip-done) and commit them in its place.")


def plan_identity(config: dict[str, Any], profile: str) -> str:
    """What a committed cells.csv keeps of a cell's configuration, as one string: the task, defense and attack
    with their parameters, the seeds, the budget, the numerics without thread counts (a sweep chooses them) and
    the profile's name. A grid's cells and a cells.csv's rows are matched on it; two grids alike in all of it
    but a profile override or a user model would be taken for one."""
    numerics = {k: v for k, v in (config.get("numerics") or {}).items() if k not in ("threads", "teacher_threads")}
    kept: dict[str, Any] = {part: {"name": config[part]["name"], "params": config[part].get("params") or {}}
                            for part in ("task", "defense", "attack")}
    kept.update(seed=int(config["seed"]), teacher_seed=int(config.get("teacher_seed") or 0),
                budget_db=config.get("budget_db"), numerics=numerics, profile=str(profile))
    return canonical_json(json.loads(canonical_json(kept)))  # through JSON: tuples and lists compare equal


def grid_plan(grid: Path | str) -> list[tuple[str, str]]:
    """Every cell the grid file names, as (:func:`plan_identity`, a label for what is missing: task, defense
    and attack with the parameters the grid sets, strength left out). Read once per file content (the report
    and the reader of its files both ask)."""
    return list(_grid_plan(str(grid), Path(grid).read_text() if Path(grid).is_file() else ""))


@functools.lru_cache(maxsize=4)
def _grid_plan(grid: str, _content: str) -> tuple[tuple[str, str], ...]:
    from bench.cell import resolve
    from bench.grid import load_file, make_grid

    def label(name: str, params: dict[str, Any]) -> str:
        shown = ", ".join(f"{k}={params_format_value(v)}" for k, v in sorted(params.items()))
        return f"{name} ({shown})" if shown else name

    plan, configs = [], {}
    for spec in make_grid(load_file(grid)).specs():
        # resolved once per configuration, not per seed pair (5,160 resolves of claims v3 took 39 s)
        unseeded = dataclasses.replace(spec, seed=0, teacher_seed=0)
        which = canonical_json(dataclasses.asdict(unseeded))
        if which not in configs:
            configs[which] = resolve(unseeded).config()
        config = {**configs[which], "seed": spec.seed, "teacher_seed": spec.teacher_seed}
        strength = _strength_param(spec.defense)
        defense_params = {k: v for k, v in spec.defense_params.items() if k != strength}
        plan.append((plan_identity(config, spec.profile),
                     f"{spec.task} · {label(spec.defense, defense_params)} · {label(spec.attack, spec.attack_params)}"))
    return tuple(plan)


def refuse_mixed_code(cells: pd.DataFrame, source: str, advice: str,
                      files: dict[str, Path | str] | None = None) -> None:
    """A one-line error where a configuration's cells were computed by different code (:func:`mixed_code`):
    they are not seeds of one experiment. ``files``: key -> the file a cell came from, to name only those."""
    mixed = mixed_code(cells)
    if not mixed:
        return
    if files:
        source = ", ".join(sorted({str(files[k]) for k in cells.loc[cells["config_id"].isin(mixed.values()), "key"]}))
    raise BenchError(f"{next(iter(mixed))} (and {len(mixed) - 1} more) has cells computed by different code in "
                     f"{source}: they are not seeds of one experiment; {advice}.")


def mixed_code(cells: pd.DataFrame) -> dict[str, str]:
    """The configurations (label -> config id) whose cells were computed by different code (the plugins' digests
    recorded in each row differ; rows without a digest are not counted)."""
    if cells.empty or "code" not in cells:
        return {}
    out: dict[str, str] = {}
    keys = ["profile_id", "task_id", "attack_id", "config_id"]
    for _, g in cells[cells["code"].notna()].groupby(keys, sort=False):
        if g["code"].nunique() > 1:
            first = g.iloc[0]
            out[f"{first['task_label']} · {first['attack_label']} · {first['defense_label']}"] = first["config_id"]
    return out


def _results(row: dict[str, Any]) -> tuple:
    """What two copies of a cell must agree on: its status and scores."""
    def same(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else round(v, 6) if isinstance(v, float) else v

    return tuple(same(row.get(k)) for k in ("status", "teacher_psnr", "served_psnr", "student_psnr",
                                            "student_ref_psnr", "student_gt_psnr"))


def csv_rows(path: Path | str) -> list[dict[str, Any]]:
    """The store rows of one cells.csv (see :func:`from_csv`): the one reader of a committed report's cells, for
    the report, the verdict and ``bench sweep --skip-done``."""
    if not Path(path).is_file():
        raise BenchError(f"{path}: no such file; pass a report's cells.csv (e.g. docs/results/claims-v2/cells.csv).")
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except (OSError, pd.errors.ParserError) as exc:
        detail = " ".join(str(exc).split())  # pandas' parser errors span lines
        raise BenchError(f"cannot read {path} as a report's cells.csv ({detail}); pass the cells.csv bench report "
                         "wrote.") from None
    missing = [c for c in ("key", "status", "task", "defense", "attack", "seed", "task_params", "defense_params",
                           "attack_params") if c not in frame]
    if missing:
        raise BenchError(f"{path} is not a report's cells.csv (no column {', '.join(missing)}); pass the cells.csv "
                         "bench report wrote.")
    meta = {"key", "status", "error", "task", "defense", "attack", "seed", "profile", "budget_db", "config"}
    rows = []
    for rec in frame.to_dict("records"):
        def unquote(v: Any) -> Any:
            return v[1:] if isinstance(v, str) and v.startswith("'") and v[1:2] in FORMULA_STARTS else v

        rec = {k: unquote(v) for k, v in rec.items()}
        params = {part: json.loads(rec[f"{part}_params"]) if isinstance(rec.get(f"{part}_params"), str) else {}
                  for part in ("task", "defense", "attack")}
        config: dict[str, Any] = {part: {"name": rec[part], "version": "1", "params": params[part]}
                                  for part in ("task", "defense", "attack")}
        budget = rec.get("budget_db")
        config.update(seed=int(rec["seed"]), teacher_seed=int(rec.get("teacher_seed") or 0),
                      budget_db=None if budget is None or pd.isna(budget) else float(budget), profile={})
        if isinstance(rec.get("numerics"), str):
            config["numerics"] = json.loads(rec["numerics"])
        metrics = {k: v for k, v in rec.items() if k not in meta and not k.endswith("_params")}
        for col in PER_IMAGE:
            if isinstance(metrics.get(col), str):
                metrics[col] = json.loads(metrics[col])
        if isinstance(metrics.get("student_shortcut"), str):
            metrics["student_shortcut"] = metrics["student_shortcut"] == "True"
        rows.append({"key": rec["key"], "status": rec["status"], "error": rec.get("error"), "task": rec["task"],
                     "defense": rec["defense"], "attack": rec["attack"], "seed": int(rec["seed"]),
                     "profile": rec.get("profile") or "quick", "budget": config["budget_db"], **metrics,
                     "config": config})
    return rows


def to_csv(cells: pd.DataFrame, path: Path) -> None:
    csv_frame(cells).to_csv(path, index=False)


def describe_ids(row: pd.Series) -> str:
    """One line naming a cell for messages: task · defense · attack · profile · seed."""
    return (f"{row['task_label']} · {row['defense_label']} · {row['attack_label']} · profile "
            f"{row['profile_label']} · seed {row['seed']}")
