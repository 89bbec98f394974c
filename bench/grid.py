"""Sweep grids: which cells ``bench sweep`` runs, from command-line flags or a YAML file.

A grid has six axes (tasks, defenses, attacks, teacher seeds, seeds, budgets) plus the profile;
its cells are the product of the axes. A task, defense or attack entry is a plugin name with optional
parameters, so one grid can hold a plugin several times (``asvp`` with ``h=1.5`` and with ``h=2``).
``all`` on an axis means every registered plugin (tasks that cannot be built with the given
parameters, such as ``folder`` without ``data``, are left out with a note), seeds ``0,1,2`` (the three
seeds published numbers average) and budgets ``0.1,0.5,1.0`` dB (DESIGN section 2).

A grid file (YAML; every key optional, flags given on the command line replace the file's axis)::

    profile: quick                  # or {name: quick, student_steps: 300}: a profile with overrides
    tasks: all                      # or a list of entries
    defenses:
      - none
      - asvp                        # default parameters
      - {name: asvp, params: {h: 2.0, k_mode: fixed}}
      - {asvp: {h: 3.0}}            # the same, short form
      - {name: asvp, sweep: {h: [1.25, 1.5, 2.0]}}   # one entry per value (a trade-off curve)
      - {name: asvp, budgets: [0.1, 0.5, 1.0]}       # this entry at its own calibrated budgets
      - {name: mad, strengths: [0.01, 0.02, 0.04]}   # a strength sweep in one line (or strengths: auto,
                                                      # the plugin's own strength_spread)
      - noise_floor                 # invisible answer noise: the chaos of training, every table's yardstick
      - {name: output_noise, strengths: auto, attacks: [vanilla_kd]}  # only against these attacks
    attacks: [vanilla_kd]
    seeds: [0, 1, 2]                # or "0-4", or all
    budgets: [null]                 # null: the strength as given; numbers: calibrated teacher cost in dB
    teacher_seeds: [0, 1]           # or teacher_seed: 0; intervals then span (teacher, student) seed pairs
    teacher: nafnet-w16             # the teacher of every cell, as --teacher takes it (bench list models, or
                                    # PACKAGE.MODULE:FACTORY); weights: FILE, as --weights (a path from where
                                    # bench runs); student: nafnet-tiny, as --student. Default: the reference
                                    # models. Kept in the file so that `bench report --grid` finds the cells.
    job_timeout: 7200               # seconds one job may run (default 12 h; 0: no limit): a job that hangs
                                    # fails its cell with that reason, and the sweep goes on

Budgets apply only to defenses with a strength parameter (``Defense.strength``); a defense without one
(``none``) runs once, uncalibrated, whatever the budgets. ``--set GROUP.KEY=VALUE`` sets a parameter of
every entry on that axis whose plugin declares it (and overrides the entry's own value); a key that no
plugin on the axis declares is an error.
"""

from __future__ import annotations

import difflib
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.params import describe
from bench.pipeline import CellSpec
from bench.registry import ATTACKS, DEFENSES, TASKS, Registry

ALL_SEEDS = (0, 1, 2)
#: most seeds one axis may hold (a range is checked before it is expanded)
MAX_SEEDS = 10_000
#: most cells one sweep plans unless --max-cells says otherwise
MAX_CELLS = 20_000
ALL_BUDGETS = (0.1, 0.5, 1.0)
FILE_KEYS = ("profile", "tasks", "defenses", "attacks", "seeds", "budgets", "teacher_seed", "teacher_seeds",
             "job_timeout", "teacher", "weights", "student")
#: grid-file keys naming the models of every cell, as the flags of the same names do
MODEL_KEYS = ("teacher", "weights", "student")
ENTRY_KEYS = ("name", "params", "sweep", "budgets", "strengths", "attacks")


@dataclass(frozen=True)
class Entry:
    """One plugin on an axis: its name, parameter overrides and (defenses only) its own budgets and the
    attacks it runs against (None: every attack on the axis)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    budgets: tuple[float | None, ...] | None = None
    attacks: tuple[str, ...] | None = None


@dataclass
class Grid:
    tasks: list[Entry]
    defenses: list[Entry]
    attacks: list[Entry]
    seeds: list[int] = field(default_factory=lambda: [0])
    budgets: list[float | None] = field(default_factory=lambda: [None])
    profile: str = "quick"
    profile_params: dict[str, Any] = field(default_factory=dict)
    teacher_seeds: list[int] = field(default_factory=lambda: [0])
    #: the teacher, its weights file and the student of every cell (None: the reference models)
    teacher: str | None = None
    weights: str | None = None
    student: str | None = None

    def specs(self) -> list[CellSpec]:
        """Every cell of the grid, in axis order (task, defense, attack, teacher seed, seed, budget),
        without repeats."""
        out: list[CellSpec] = []
        seen: set[str] = set()
        for task, defense, attack, teacher_seed, seed in itertools.product(
                self.tasks, self.defenses, self.attacks, self.teacher_seeds, self.seeds):
            if defense.attacks is not None and attack.name not in defense.attacks:
                continue
            for budget in self._budgets_for(defense):
                spec = CellSpec(task=task.name, defense=defense.name, attack=attack.name, seed=seed,
                                profile=self.profile, task_params=dict(task.params),
                                defense_params=dict(defense.params), attack_params=dict(attack.params),
                                profile_params=dict(self.profile_params), teacher_seed=teacher_seed,
                                budget_db=budget, teacher=self.teacher, weights=self.weights,
                                student=self.student)
                ident = repr(spec)
                if ident not in seen:
                    seen.add(ident)
                    out.append(spec)
        return out

    def size_bound(self) -> int:
        """How many cells :meth:`specs` will give at most (without expanding them)."""
        budgets = max([len(self._budgets_for(d)) for d in self.defenses] or [1])
        return (len(self.tasks) * len(self.defenses) * len(self.attacks) * len(self.teacher_seeds)
                * len(self.seeds) * budgets)

    def check_size(self, max_cells: int = MAX_CELLS) -> None:
        """A one-line error for a grid larger than ``max_cells`` cells (a typo in a seed range, say),
        before anything is planned."""
        n = self.size_bound()
        if n > max_cells:
            raise BenchError(f"this grid has up to {n} cells, over the limit of {max_cells}; check its axes, or "
                             f"pass --max-cells {n} to run it.")

    def _budgets_for(self, defense: Entry) -> list[float | None]:
        budgets = list(defense.budgets) if defense.budgets is not None else list(self.budgets)
        if DEFENSES.get(defense.name).strength is None:
            return [None]  # nothing to calibrate: the defense runs once, as it is
        return budgets


# ------------------------------------------------------------------------------------------ parsing
def parse_seeds(value: Any, where: str = "--seeds") -> list[int]:
    """``"0,1,2"``, ``"0-4"``, ``all``, an int or a list of ints -> seeds."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return list(ALL_SEEDS)
    items = _items(value)
    seeds: list[int] = []
    for item in items:
        text = str(item).strip()
        try:
            if isinstance(item, str) and "-" in text.lstrip("-"):
                lo, hi = (int(p) for p in text.split("-", 1))
                if hi < lo:
                    raise ValueError
                if hi - lo + 1 > MAX_SEEDS:
                    raise BenchError(f"{where}: {text} is {hi - lo + 1} seeds; one grid takes at most {MAX_SEEDS} "
                                     "(split it into several sweeps on one store).")
                seeds.extend(range(lo, hi + 1))
            elif isinstance(item, bool):
                raise ValueError
            else:
                seeds.append(int(text))
        except ValueError:
            raise BenchError(f"{where}: seeds are integers, ranges like 0-4, or all; got {item!r}.") from None
    if not seeds or any(s < 0 for s in seeds):
        raise BenchError(f"{where}: give at least one seed, each >= 0 (got {value!r}).")
    if len(set(seeds)) > MAX_SEEDS:
        raise BenchError(f"{where}: {len(set(seeds))} seeds; one grid takes at most {MAX_SEEDS}.")
    return list(dict.fromkeys(seeds))


def parse_budgets(value: Any, where: str = "--budgets") -> list[float | None]:
    """``"0.1,0.5"``, ``none``, ``all`` or a list -> budgets in dB (None: the strength as given)."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return list(ALL_BUDGETS)
    out: list[float | None] = []
    for item in _items(value):
        if item is None or str(item).strip().lower() in ("none", "null", ""):
            out.append(None)
            continue
        try:
            b = float(item)
            if isinstance(item, bool) or not b > 0:
                raise ValueError
        except (TypeError, ValueError):
            raise BenchError(f"{where}: budgets are teacher costs in dB (> 0), none, or all; got {item!r}.") \
                from None
        out.append(b)
    if not out:
        raise BenchError(f"{where}: give at least one budget (none: the strength as given).")
    return list(dict.fromkeys(out))


def _items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def parse_entries(value: Any, registry: Registry, where: str, *, task_params: dict[str, Any] | None = None,
                  profile: Any = None) -> list[Entry]:
    """An axis from a flag (``"none,asvp"``, ``all``) or a YAML value (names and entry mappings)."""
    if value is None:
        raise BenchError(f"{where}: give at least one {registry.kind} name, or all.")
    if isinstance(value, str) and value.strip().lower() == "all":
        return _all_entries(registry, task_params or {}, profile)
    items = _items(value)
    if not items:
        raise BenchError(f"{where}: give at least one {registry.kind} name, or all.")
    entries: list[Entry] = []
    for item in items:
        entries.extend(_entry(item, registry, where))
    return entries


def _entry(item: Any, registry: Registry, where: str) -> list[Entry]:
    if isinstance(item, str):
        registry.info(item)  # unknown names fail here, with the closest match
        return [Entry(item)]
    if not isinstance(item, dict):
        raise BenchError(f"{where}: an entry is a {registry.kind} name or a mapping with 'name'; got {item!r}.")
    if "name" not in item:
        if len(item) != 1:
            raise BenchError(f"{where}: entry {item!r} needs a 'name' (or the short form {{NAME: {{PARAM: "
                             "VALUE}}}).")
        ((name, params),) = item.items()
        item = {"name": name, "params": params or {}}
    unknown = set(item) - set(ENTRY_KEYS)
    if unknown:
        raise BenchError(f"{where}: entry {item.get('name')!r} has unknown key(s) {', '.join(sorted(unknown))}; "
                         f"valid keys: {', '.join(ENTRY_KEYS)}.")
    name = str(item["name"])
    registry.info(name)
    params = item.get("params") or {}
    sweep = item.get("sweep") or {}
    if not isinstance(params, dict) or not isinstance(sweep, dict):
        raise BenchError(f"{where}: 'params' and 'sweep' of {name!r} must be mappings of parameter names.")
    budgets = None
    if "budgets" in item:
        if registry is not DEFENSES:
            raise BenchError(f"{where}: 'budgets' applies to defense entries only (entry {name!r}).")
        budgets = tuple(parse_budgets(item["budgets"], f"{where}: budgets of {name!r}"))
    attacks = None
    if "attacks" in item:
        if registry is not DEFENSES:
            raise BenchError(f"{where}: 'attacks' applies to defense entries only (entry {name!r}).")
        attacks = tuple(str(a) for a in _items(item["attacks"]))
        if not attacks:
            raise BenchError(f"{where}: 'attacks' of {name!r} names no attack; drop it to run every attack.")
        for a in attacks:
            ATTACKS.info(a)  # unknown names fail here, with the closest match
    if "strengths" in item:
        sweep = {**sweep, **_strengths(item["strengths"], registry, name, where)}
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise BenchError(f"{where}: sweep.{key} of {name!r} must be a non-empty list of values.")
    keys = list(sweep)
    out = []
    for combo in itertools.product(*(sweep[k] for k in keys)):
        out.append(Entry(name, {**params, **dict(zip(keys, combo))}, budgets, attacks))
    return out


def _strengths(value: Any, registry: Registry, name: str, where: str) -> dict[str, list[Any]]:
    """``strengths: [..]`` (or ``auto``: the plugin's ``strength_spread``) -> a sweep of its strength."""
    if registry is not DEFENSES:
        raise BenchError(f"{where}: 'strengths' applies to defense entries only (entry {name!r}).")
    cls = DEFENSES.get(name)
    if not cls.strength:
        raise BenchError(f"{where}: defense {name!r} has no strength parameter, so it has no strengths to sweep; "
                         "drop 'strengths' from its entry.")
    if isinstance(value, str) and value.strip().lower() == "auto":
        spread = getattr(cls, "strength_spread", None)
        if not spread:
            raise BenchError(f"{where}: defense {name!r} declares no strength_spread, so 'strengths: auto' has "
                             f"nothing to use; list the values of {cls.strength} instead.")
        return {cls.strength: list(spread)}
    values = value if isinstance(value, list) else _items(value)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in values):
        raise BenchError(f"{where}: strengths of {name!r} must be a list of {cls.strength} values, or auto; "
                         f"got {value!r}.")
    return {cls.strength: list(values)}


def _all_entries(registry: Registry, task_params: dict[str, Any], profile: Any) -> list[Entry]:
    if registry is not TASKS:
        return [Entry(n) for n in registry.names()]
    from bench.layouts import in_all_tasks, task_fields
    from bench.pipeline import make_plugin

    out = []
    for name in registry.names():
        cls = registry.get(name)
        declared = task_fields(cls)  # its own parameters and the data ones (--data DIR)
        params = {k: v for k, v in task_params.items() if k in declared}
        try:
            task = make_plugin(TASKS, name, params, profile=profile)
            task.identity()
        except BenchError as exc:
            print(f"note: 'all' tasks leaves out {name} ({exc})", file=sys.stderr)
            continue
        source = task.data_source()
        if not in_all_tasks(task):  # e.g. plain pairs, which fit every task: the user names the one meant
            print(f"note: 'all' tasks leaves out {name} (it would read {source.found().origin} in layout "
                  f"{source.layout.name}, not one of its own: name it with --tasks {name} if that is meant)",
                  file=sys.stderr)
            continue
        out.append(Entry(name))
    return out


def apply_sets(entries: list[Entry], registry: Registry, sets: dict[str, Any], group: str) -> list[Entry]:
    """``--set GROUP.KEY=VALUE`` on every entry whose plugin declares KEY (overriding its own value)."""
    if not sets:
        return entries
    from bench.layouts import task_fields

    def fields(cls: type) -> set[str]:  # a task also takes the data parameters (--data DIR and friends)
        return task_fields(cls) if registry is TASKS else {f.name for f in describe(cls.Params)}

    declared = {e.name: fields(registry.get(e.name)) for e in entries}
    for key in sets:
        if not any(key in keys for keys in declared.values()):
            known = sorted(set().union(*declared.values()))
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise BenchError(f"--set {group}.{key}: no {registry.kind} in the sweep has parameter '{key}'.{hint} "
                             f"Their parameters: {', '.join(known) or '(none)'}.")
    return [Entry(e.name, {**e.params, **{k: v for k, v in sets.items() if k in declared[e.name]}}, e.budgets,
                  e.attacks)
            for e in entries]


def load_file(path: Path | str) -> dict[str, Any]:
    """The raw mapping of a YAML grid file (validated by :func:`make_grid`)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read grid file {path}: {exc.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BenchError(f"grid file {path} is not valid YAML{where}; fix its syntax.") from None
    if data is None or data == {}:
        raise BenchError(f"grid file {path} is empty; give at least its tasks (see grids/smoke.yaml), or run "
                         "bench sweep with flags alone.")
    if not isinstance(data, dict):
        raise BenchError(f"grid file {path} must be a mapping with keys {', '.join(FILE_KEYS)}.")
    unknown = set(data) - set(FILE_KEYS)
    if unknown:
        raise BenchError(f"grid file {path} has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"valid keys: {', '.join(FILE_KEYS)}.")
    return data


def make_grid(file: dict[str, Any] | None = None, *, tasks: Any = None, defenses: Any = None,
              attacks: Any = None, seeds: Any = None, budgets: Any = None, profile: str | None = None,
              teacher_seeds: Any = None, sets: dict[str, dict[str, Any]] | None = None,
              teacher: str | None = None, weights: str | None = None, student: str | None = None) -> Grid:
    """A grid from a grid file's mapping and command-line values (which replace the file's axes; a model
    flag replaces the file's models).

    Defaults: all tasks, all defenses, vanilla_kd, seed 0, no budget, the quick profile.
    """
    from bench.profiles import get_profile

    file = dict(file or {})
    sets = sets or {}
    prof = file.get("profile", "quick")
    profile_params: dict[str, Any] = {}
    if isinstance(prof, dict):
        prof = dict(prof)
        prof_name = str(prof.pop("name", "quick"))
        profile_params.update(prof)
    else:
        prof_name = str(prof)
    if profile is not None:
        prof_name = profile
    profile_params.update(sets.get("profile", {}))
    prof_obj = get_profile(prof_name, profile_params)  # validated here, before any plugin is built

    task_sets = sets.get("task", {})
    task_entries = parse_entries(tasks if tasks is not None else file.get("tasks", "all"), TASKS,
                                 "--tasks" if tasks is not None else "tasks", task_params=task_sets,
                                 profile=prof_obj)
    defense_entries = parse_entries(defenses if defenses is not None else file.get("defenses", "all"), DEFENSES,
                                    "--defenses" if defenses is not None else "defenses")
    attack_entries = parse_entries(attacks if attacks is not None else file.get("attacks", "vanilla_kd"), ATTACKS,
                                   "--attacks" if attacks is not None else "attacks")
    if "teacher_seed" in file and "teacher_seeds" in file:
        raise BenchError("a grid file gives teacher_seed or teacher_seeds, not both; keep teacher_seeds.")
    if teacher_seeds is not None:
        t_seeds = parse_seeds(teacher_seeds, "--teacher-seeds")
    elif "teacher_seeds" in file:
        t_seeds = parse_seeds(file["teacher_seeds"], "teacher_seeds")
    else:
        t_seed = file.get("teacher_seed", 0)
        if isinstance(t_seed, bool) or not isinstance(t_seed, int) or t_seed < 0:
            raise BenchError(f"teacher_seed must be an integer >= 0, got {t_seed!r}.")
        t_seeds = [t_seed]
    on_axis = {e.name for e in attack_entries}
    for e in defense_entries:
        missing = [a for a in e.attacks or () if a not in on_axis]
        if missing:
            raise BenchError(f"defense entry {e.name!r} runs against {', '.join(missing)}, which the attacks axis "
                             f"does not hold ({', '.join(sorted(on_axis))}); add it there or drop it from the entry.")
    return Grid(
        tasks=apply_sets(task_entries, TASKS, task_sets, "task"),
        defenses=apply_sets(defense_entries, DEFENSES, sets.get("defense", {}), "defense"),
        attacks=apply_sets(attack_entries, ATTACKS, sets.get("attack", {}), "attack"),
        seeds=parse_seeds(seeds if seeds is not None else file.get("seeds", [0]),
                          "--seeds" if seeds is not None else "seeds"),
        budgets=parse_budgets(budgets if budgets is not None else file.get("budgets", [None]),
                              "--budgets" if budgets is not None else "budgets"),
        profile=prof_name, profile_params=profile_params, teacher_seeds=t_seeds,
        **_models(file, {"teacher": teacher, "weights": weights, "student": student}),
    )


def _models(file: dict[str, Any], flags: dict[str, str | None]) -> dict[str, str | None]:
    """The grid's teacher, weights and student: the flags where any is given (a flag names the models of the
    run, so the file's are not mixed in), else the file's; one-line errors for a value that is not a name."""
    if any(v is not None for v in flags.values()):
        return dict(flags)
    out: dict[str, str | None] = {}
    for key in MODEL_KEYS:
        value = file.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise BenchError(f"grid file key {key!r} must be a name as --{key} takes it (e.g. nafnet-w16), "
                             f"got {value!r}.")
        out[key] = value.strip() if isinstance(value, str) else None
    return out


def parse_timeout(value: Any, where: str) -> float | None:
    """A job time limit in seconds (None: not given; 0: no limit); a one-line error for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BenchError(f"{where} must be a number of seconds >= 0 (0: no limit), got {value!r}.")
    return float(value)
