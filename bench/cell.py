"""A cell's identity and construction (DESIGN section 2): what a user asks for (:class:`CellSpec`), the
validated cell (:class:`Cell`, whose :meth:`Cell.config` is the cell's key) built by :func:`resolve`, the
code digests recorded in every row (:func:`plugin_code`, :func:`stale_code`) and the rule by which a cell
learns from a teacher trained with other threads (:func:`share_teacher`). Shared by the runner
(:mod:`bench.pipeline`) and the planner (:mod:`bench.scheduler`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import bench
from bench import BenchError, guards
from bench.api import Attack, Defense, Task
from bench.cache import Artifacts, config_key
from bench.calibrate import check_budget
from bench.models.field import resolve_model
from bench.numerics import numerics, resolve_device
from bench.params import build
from bench.profiles import CALIB_FIELDS, Profile, get_profile
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.serving import resolve_module
from bench.stages import teacher_config
from bench.usermodel import UserModel

__all__ = ["SHARE_THREADS", "Cell", "CellSpec", "check_layers", "code_digest", "make_plugin", "plugin_code",
           "resolve", "share_teacher", "sharing_note", "stale_code", "versions"]


@dataclass(frozen=True)
class CellSpec:
    """What a user asks for: names and raw parameter overrides (validated by :func:`resolve`)."""

    task: str
    defense: str = "none"
    attack: str = "vanilla_kd"
    seed: int = 0
    profile: str = "quick"
    task_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, Any] = field(default_factory=dict)
    profile_params: dict[str, Any] = field(default_factory=dict)
    teacher_seed: int = 0
    #: run the defense at the strength calibrated to cost the teacher this many dB (None: as given)
    budget_db: float | None = None
    #: the user's own teacher / student (``PACKAGE.MODULE:FACTORY``, bench.usermodel), or an architecture of the
    #: field by name (``nafnet-w16``, bench.models.field); None: reference
    teacher: str | None = None
    #: weights file for ``teacher`` (used as is; without ``teacher``: a checkpoint whose architecture spandrel
    #: detects); None: the suite trains the teacher
    weights: str | None = None
    student: str | None = None
    #: torch threads the cell runs with (0: the running process's count); part of every key, since the
    #: thread count changes trained models (bench.numerics). A sweep fills it in before planning.
    threads: int = 0
    #: the device the cell runs on (cpu, cuda, cuda:N; auto is resolved by :func:`resolve`)
    device: str = "cpu"
    #: the thread count of an existing teacher trained with other threads than the cell's, which the cell's
    #: students learn from instead of training a second teacher (0: the teacher of the cell's own numerics).
    #: Filled in by :func:`share_teacher` (bench run and the sweep's planner), not by hand.
    teacher_threads: int = 0


@dataclass
class Cell:
    spec: CellSpec
    profile: Profile
    task: Task
    defense: Defense
    attack: Attack
    teacher_model: UserModel | None = None
    student_model: UserModel | None = None

    def config(self) -> dict[str, Any]:
        # with a budget the strength is the calibration's, so the key holds the budget instead
        budgeted = self.spec.budget_db is not None
        config = {
            "task": self.task.identity(),
            "defense": self.defense.calibration_identity() if budgeted else self.defense.identity(),
            "attack": self.attack.identity(),
            "seed": self.spec.seed,
            "teacher_seed": self.spec.teacher_seed,
            "budget_db": self.spec.budget_db,
            # the calib pool only matters to a cell through a calibration: a cell run at a set strength
            # keeps its key whatever the calib settings
            # precision is keyed with the numerics, not here
            "profile": {k: v for k, v in dataclasses.asdict(self.profile).items()
                        if k not in ("name", "precision") and (budgeted or k not in CALIB_FIELDS)},
        }
        config["numerics"] = self.numerics
        if self.shares_teacher:  # only when set, so the keys of cells on their own numerics' teacher stay
            config["teacher_threads"] = self.spec.teacher_threads
        if self.teacher_model is not None:  # only when set, so reference-model keys stay as they were
            config["teacher_model"] = self.teacher_model.identity()
        if self.student_model is not None:
            config["student_model"] = self.student_model.identity()
        return config

    @property
    def numerics(self) -> dict[str, Any]:
        return numerics(self.spec.threads, self.spec.device, self.profile.precision)

    @property
    def teacher_numerics(self) -> dict[str, Any]:
        """The numerics the cell's teacher was trained with: the cell's own, or a shared teacher's."""
        if self.spec.teacher_threads:
            return numerics(self.spec.teacher_threads, self.spec.device, self.profile.precision)
        return self.numerics

    @property
    def shares_teacher(self) -> bool:
        """True when the cell's students learn from a teacher trained with other numerics (:func:`share_teacher`)."""
        return self.teacher_numerics != self.numerics

    def student_numerics(self) -> dict[str, Any]:
        """What the keys of everything trained or measured downstream of the teacher add for the cell's own
        numerics: nothing when the teacher has them (its key holds them), else the cell's numerics, so that
        students trained with one thread on a shared teacher are never taken for students trained with two."""
        return {"numerics": self.numerics} if self.shares_teacher else {}

    def teacher_config(self) -> dict[str, Any]:
        """The config (and so the key) of the teacher the cell's students learn from."""
        return teacher_config(self.task, self.profile, self.spec.teacher_seed, self.teacher_model,
                              self.teacher_numerics)

    def teacher_arch(self) -> nn.Module:
        """A fresh teacher architecture (the user's, without weights, or the task's reference one)."""
        return self.teacher_model.build(weights=False) if self.teacher_model else self.task.teacher_arch()

    def student_arch(self) -> nn.Module:
        return self.student_model.build() if self.student_model else self.task.student_arch()

    @property
    def key(self) -> str:
        return config_key(self.config())


def make_plugin(registry, name: str, overrides: dict[str, Any], **kwargs: Any) -> Any:
    cls = registry.get(name)
    data: dict[str, Any] = {}
    if registry is TASKS:  # every task also takes the data parameters (--data DIR and friends: bench.layouts)
        from bench.layouts import split_overrides

        overrides, data = split_overrides(cls, overrides)
    try:
        params = build(cls.Params, overrides, owner=f"{registry.kind} '{name}'")
    except BenchError as exc:
        raise BenchError(str(exc) + _elsewhere(registry, name, overrides)) from None
    plugin = cls(params, **kwargs)
    if registry is TASKS:
        from bench.layouts import attach_data

        attach_data(plugin, data)
    return plugin


def _elsewhere(registry, name: str, overrides: dict[str, Any]) -> str:
    """For a parameter this plugin lacks: which plugins of its kind have it (``scale`` on derain: sr and
    folder have it; ``--data`` is the folder task's)."""
    from bench.params import describe

    declared = {f.name for f in describe(registry.get(name).Params)}
    hints = []
    for key in (k for k in overrides if k not in declared):
        owners = []
        for other in registry.names():
            try:
                if other != name and key in {f.name for f in describe(registry.get(other).Params)}:
                    owners.append(other)
            except BenchError:  # a broken plugin has no parameters to offer
                continue
        if owners:
            hints.append(f" '{key}' is a parameter of {registry.kind} {', '.join(owners)}.")
    return "".join(hints)


def resolve(spec: CellSpec) -> Cell:
    """Instantiate and validate every part of a cell (fails fast, before any training)."""
    if spec.seed < 0 or spec.teacher_seed < 0:
        raise BenchError("seeds must be >= 0.")
    device = resolve_device(spec.device)
    if device != spec.device:
        spec = dataclasses.replace(spec, device=device)
    profile = get_profile(spec.profile, spec.profile_params)
    task = make_plugin(TASKS, spec.task, spec.task_params, profile=profile)
    task.device = torch.device(device)
    defense = make_plugin(DEFENSES, spec.defense, spec.defense_params, seed=spec.seed)
    check_budget(defense, spec.budget_db, spec.defense_params)
    attack = make_plugin(ATTACKS, spec.attack, spec.attack_params, seed=spec.seed)
    where = f"task '{spec.task}'"
    # PACKAGE.MODULE:FACTORY (bench.usermodel), an architecture of the field or a checkpoint whose architecture
    # spandrel detects (bench.models.field), or None: the reference architecture
    teacher = resolve_model("teacher", spec.teacher, spec.weights, scale=task.scale, task_name=where, profile=profile)
    student = resolve_model("student", spec.student, None, scale=task.scale, task_name=where, profile=profile)
    cell = Cell(spec, profile, task, defense, attack, teacher, student)
    check_layers(cell)
    guards.check_memory(cell)  # a cell that cannot fit in memory is refused before anything is built
    return cell


def check_layers(cell: Cell) -> None:
    """Fail fast, before any training, on feature layers the teacher does not have."""
    model = cell.teacher_arch()
    users = [("defense", cell.spec.defense, cell.defense.feature_layers(model))]
    if cell.attack.access == "features":
        users.append(("attack", cell.spec.attack, cell.attack.feature_layers(model)))
    for kind, name, layers in users:
        for layer in layers:
            try:
                resolve_module(model, layer)
            except BenchError as exc:
                raise BenchError(f"{kind} '{name}': {exc} Set them with --set {kind}.layers=NAME,NAME.") from None


def versions() -> dict[str, str]:
    return {"bench": bench.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


@functools.lru_cache(maxsize=256)
def code_digest(cls: type) -> str:
    """A digest of the code of the module that defines a plugin class, docstrings and comments left out
    (editing them does not change results; editing the code may)."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(sys.modules[cls.__module__]))
    except (OSError, TypeError, KeyError, SyntaxError):
        return "unknown"
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def plugin_code(cell: Cell) -> dict[str, str]:
    """The code digest of the cell's task, defense and attack (recorded in every row)."""
    return {"task": code_digest(type(cell.task)), "defense": code_digest(type(cell.defense)),
            "attack": code_digest(type(cell.attack))}


def stale_code(row: dict[str, Any], cell: Cell) -> list[str]:
    """The plugins of ``cell`` whose code changed since ``row`` was computed (empty for a row from before
    code digests were recorded): such a row is not reused, since its numbers came from other code. A
    plugin author who changes results on purpose should also bump the class's ``version``."""
    recorded = (row.get("versions") or {}).get("code") or {}
    now = plugin_code(cell)
    names = {"task": cell.spec.task, "defense": cell.spec.defense, "attack": cell.spec.attack}
    return [f"{kind} '{names[kind]}'" for kind in now
            if recorded.get(kind) not in (None, "unknown", now[kind])]


#: thread counts searched for a teacher to share (bench.numerics: a thread count is part of a teacher's key)
SHARE_THREADS = range(1, max(64, os.cpu_count() or 1) + 1)


def share_teacher(cell: Cell, artifacts: Artifacts) -> Cell:
    """``cell``, learning from an existing teacher trained with another thread count where the store has no
    teacher of the cell's own numerics (DESIGN: the teacher is the owner's fixed asset, and its weights are
    what its students pair on). ``bench run`` trains with every thread and a parallel sweep with one per job:
    without this a sweep after a run trained a second teacher of the same task and seed, silently, and its
    cells could not be compared with the run's. The cell's own numerics still key every student, defense fit
    and calibration (:meth:`Cell.student_numerics`), and the cell records ``teacher_threads``. Same device
    and precision only; a teacher given as a weights file is never trained, so there is nothing to share."""
    if cell.spec.teacher_threads or (cell.teacher_model is not None and cell.teacher_model.weights):
        return cell

    # one config (the task's identity hashes its data once), re-keyed per thread count
    base = teacher_config(cell.task, cell.profile, cell.spec.teacher_seed, cell.teacher_model, cell.numerics)

    def trained(threads: int) -> bool:
        config = {**base, "numerics": numerics(threads, cell.spec.device, cell.profile.precision)}
        return (artifacts.dir(config_key(config)) / "model.pt").exists()

    own = int(cell.numerics["threads"])
    if trained(own):
        return cell
    for threads in SHARE_THREADS:  # the fewest threads first: one rule, so the planner and runner agree
        if threads != own and trained(threads):
            return dataclasses.replace(cell, spec=dataclasses.replace(cell.spec, teacher_threads=threads))
    return cell


def sharing_note(cell: Cell) -> str:
    """One line saying that ``cell`` learns from a teacher trained with other threads, and how to avoid it."""
    return (f"note: {cell.spec.task} teacher (seed {cell.spec.teacher_seed}) trained with {cell.spec.teacher_threads} "
            f"thread(s) is reused; its students here train with {cell.numerics['threads']} and are keyed so "
            "(reports show the thread counts apart). For one thread count throughout, run bench run with --threads 1 "
            "before a parallel sweep, or the sweep with --n-jobs 1.")
