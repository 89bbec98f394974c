"""One cell of the grid, end to end (DESIGN section 2).

(task, defense + params, attack + params, seed, profile) -> teacher (cached), served model, paired
reference student (undefended, cached), attacked student and the ``gt_student`` (the attack trained on
the attacker pool's ground truth; cached per task, profile, attack and seed, shared by every defense),
scored on the test split, stored as one row. The cell seed drives the students' initialisation, the
data order and the defense's randomness; the teacher uses ``teacher_seed`` (0 by default), the owner's
fixed asset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import bench
from bench import BenchError, adaptive, guards
from bench.api import Attack, AttackContext, Defense, FitContext, Task
from bench.cache import Artifacts, atomic_write_bytes, config_key
from bench.calibrate import calibrated_cell, check_budget, pool_digest
from bench.data import Pool, stable_seed
from bench.metrics import psnr, ssim
from bench.numerics import job_device, numerics, on_device, resolve_device
from bench.params import build
from bench.profiles import ANSWER_FIELDS, CALIB_FIELDS, STUDENT_FIELDS, TEACHER_FIELDS, Profile, get_profile, subset
from bench.query import GroundTruthUnsupported, OfflineAPI, QueryAPI
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.serving import resolve_module
from bench.store import Store
from bench.train import train
from bench.usermodel import UserModel

TEACHER_RECIPE = "1"  # bump when the teacher training recipe in this file changes
STUDENT_RECIPE = "1"
SCORES_RECIPE = "2"  # bump when evaluate() or bench.metrics changes: scores of cached models are kept


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
    #: the user's own teacher / student (``PACKAGE.MODULE:FACTORY``, bench.usermodel); None: reference
    teacher: str | None = None
    #: weights file for ``teacher`` (used as is); None: the suite trains the user's teacher
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
    if spec.weights and not spec.teacher:
        raise BenchError("--weights needs --teacher PACKAGE.MODULE:FACTORY (the model the weights are for).")
    where = f"task '{spec.task}'"
    teacher = UserModel.resolve("teacher", spec.teacher, spec.weights, scale=task.scale, task_name=where,
                                profile=profile) if spec.teacher else None
    student = UserModel.resolve("student", spec.student, scale=task.scale, task_name=where,
                                profile=profile) if spec.student else None
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


def _seeded_build(build_fn, seed: int) -> nn.Module:
    """``build_fn()`` initialised from ``seed`` on the CPU (the same weights on every device), then moved
    to the job's device."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = build_fn()
    return model.to(job_device())


# --------------------------------------------------------------------------------------- stages
def teacher_config(task: Task, profile: Profile, teacher_seed: int,
                   user_model: UserModel | None = None, numerics_: dict[str, Any] | None = None) -> dict[str, Any]:
    # the numerics are keyed even for a weights file used as is: every model and score downstream of the
    # teacher inherits its key, and their numbers depend on the numerics they were computed with
    num = numerics_ or numerics()
    if user_model is not None and user_model.weights:  # used as is: neither profile nor seed made it
        return {"kind": "teacher", "task": task.identity(), "model": user_model.identity(), "numerics": num}
    config = {"kind": "teacher", "recipe": TEACHER_RECIPE, "task": task.identity(),
              "profile": subset(profile, TEACHER_FIELDS), "seed": teacher_seed, "numerics": num}
    if user_model is not None:
        config["model"] = user_model.identity()
    return config


def get_teacher(task: Task, profile: Profile, teacher_seed: int, artifacts: Artifacts, *,
                progress: bool = True, force: bool = False, user_model: UserModel | None = None,
                numerics_: dict[str, Any] | None = None) -> tuple[nn.Module, str, bool]:
    """The owner's teacher for (task, profile, seed, numerics): trained on ``owner`` once, then cached.
    With a ``user_model``: its weights file as is, or (without one) its architecture trained the same
    way. ``numerics_`` defaults to this process's (:func:`bench.numerics.numerics`)."""
    config = teacher_config(task, profile, teacher_seed, user_model, numerics_)
    if user_model is not None and user_model.weights:
        with torch.device("cpu"):
            model = user_model.build()
        return model.to(job_device()), config_key(config), False

    def build_fn() -> nn.Module:
        arch = user_model.build if user_model is not None else task.teacher_arch
        return _seeded_build(arch, stable_seed("teacher-init", teacher_seed))

    def train_fn(model: nn.Module) -> dict[str, Any]:
        owner = task.splits().owner
        t = time.perf_counter()
        losses = train(model, lambda g: owner.sample_crops(profile.batch, profile.crop, g),
                       steps=profile.teacher_steps, lr=profile.teacher_lr,
                       seed=stable_seed("teacher-data", teacher_seed),
                       desc=f"training teacher ({task.name})", progress=progress)
        return {"train_s": time.perf_counter() - t, "final_loss": losses[-1] if losses else None}

    return artifacts.cached_model(config, build_fn, train_fn, force=force)


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

    def trained(threads: int) -> bool:
        config = teacher_config(cell.task, cell.profile, cell.spec.teacher_seed, cell.teacher_model,
                                numerics(threads, cell.spec.device, cell.profile.precision))
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


@torch.no_grad()
def check_deterministic(teacher: nn.Module, probe: torch.Tensor, cell: Cell) -> None:
    """A one-line error for a teacher whose eval forward is not a function of its input (dropout or noise left
    on in eval mode): every drop the suite measures is a difference of two forwards, so such a teacher makes
    a defense that changes nothing look costly (measured: 0.106 and 0.044 dB from two runs of one key)."""
    first, second = teacher(probe), teacher(probe)
    same = torch.equal(first, second) if probe.device.type == "cpu" else \
        torch.allclose(first, second, rtol=1e-5, atol=1e-6)  # GPU kernels: deterministic up to rounding
    if not same:
        gap = float((first.float() - second.float()).abs().max())
        where = f" ({cell.teacher_model.identity().get('factory')})" if cell.teacher_model is not None else ""
        raise BenchError(f"the {cell.spec.task} teacher{where} is not deterministic: two forwards of one test image "
                         f"differ by up to {gap:.3g} in eval mode (dropout or noise left on?); make its eval "
                         "forward a function of its input (model.eval() must switch randomness off).")


def _attack_context(cell: Cell, artifacts: Artifacts, *, exposed: tuple[str, ...] = (), progress: bool = True,
                    ground_truth: bool = False, role: str = "") -> AttackContext:
    # Attack assets (e.g. finetune's public pretrained student) never see the teacher, so they are keyed
    # by the attack's own config alone; --force does not recompute them (it would retrain them for each
    # student of the cell).
    def cached_model(config, build_fn, train_fn):
        return artifacts.cached_model({"scope": "attack", **config, "numerics": cell.numerics}, build_fn,
                                      train_fn)[0]

    return AttackContext(profile=cell.profile, seed=stable_seed("attack-data", cell.spec.seed), task=cell.task,
                         budget=cell.attack.budget(cell.profile), exposed_layers=exposed, progress=progress,
                         artifacts=artifacts.root, ground_truth=ground_truth, cached_model=cached_model,
                         student_arch=cell.student_arch, role=role)


def steal_student(cell: Cell, teacher: nn.Module, defense: Defense, *, artifacts: Artifacts,
                  progress: bool = True, role: str = "defended") -> tuple[nn.Module, int]:
    """Run the cell's attack against ``defense`` serving ``teacher``; returns (student, queries used).
    The attack's adaptive countermeasures (:mod:`bench.adaptive`) wrap its query API here."""
    task, attack = cell.task, cell.attack
    exposed = tuple(attack.feature_layers(teacher)) if attack.access == "features" else ()
    student = _seeded_build(cell.student_arch, stable_seed("student-init", cell.spec.seed))
    ctx = _attack_context(cell, artifacts, exposed=exposed, progress=progress, role=role)
    with defense.serve(teacher, exposed_layers=exposed, answer_bits=cell.profile.answer_bits) as served:
        api = adaptive.wrap(QueryAPI(served, ctx.budget, attack.access), attack.params)
        student = attack.steal(api, task.splits().attacker, student, ctx)
    student.eval()
    return student, api.used


def gt_config(cell: Cell) -> dict[str, Any]:
    config = {"kind": "gt_student", "recipe": STUDENT_RECIPE, "task": cell.task.identity(),
              "attack": cell.attack.identity(), "seed": cell.spec.seed,
              "profile": subset(cell.profile, STUDENT_FIELDS), "numerics": cell.numerics}
    if cell.student_model is not None:
        config["student_model"] = cell.student_model.identity()
    return config


def gt_student(cell: Cell, artifacts: Artifacts, *, progress: bool = True, force: bool = False) -> nn.Module:
    """The ``gt_student`` reference: the cell's attack trained on the clean images of the attacker pool
    (what the attacker could reach with labels), with the attacked student's initialisation, query
    images, data order and steps. It needs no teacher: cached per (task, profile, attack, seed) and shared
    by every defense."""
    task, attack = cell.task, cell.attack

    def build_fn() -> nn.Module:
        return _seeded_build(cell.student_arch, stable_seed("student-init", cell.spec.seed))

    def train_fn(student: nn.Module) -> dict[str, Any]:
        t = time.perf_counter()
        ctx = _attack_context(cell, artifacts, progress=progress, ground_truth=True, role="ground truth")
        api = adaptive.wrap(OfflineAPI(ctx.budget, attack.access), attack.params)
        trained = attack.steal(api, task.splits().attacker, student, ctx)
        if trained is not student:
            student.load_state_dict(trained.state_dict())
        return {"train_s": time.perf_counter() - t}

    return artifacts.cached_model(gt_config(cell), build_fn, train_fn, force=force)[0]


def fit_defense(cell: Cell, teacher: nn.Module, teacher_key: str, artifacts: Artifacts, *,
                progress: bool = True, force: bool = False) -> None:
    """Let the cell's defense train what it needs (surrogates, changed teachers), cached per config."""
    def cached_model(config, build_fn, train_fn):
        return artifacts.cached_model({"teacher": teacher_key, **cell.student_numerics(), **config}, build_fn,
                                      train_fn, force=force)[0]

    ctx = FitContext(profile=cell.profile, seed=cell.spec.seed, task=cell.task, progress=progress,
                     cached_model=cached_model)
    cell.defense.fit(teacher, cell.task.splits(), ctx)


def reference_config(cell: Cell, teacher_key: str) -> dict[str, Any]:
    config = {"kind": "student", "recipe": STUDENT_RECIPE, "teacher": teacher_key,
              "attack": cell.attack.identity(), "seed": cell.spec.seed,
              "profile": subset(cell.profile, STUDENT_FIELDS + ANSWER_FIELDS), **cell.student_numerics()}
    if cell.student_model is not None:
        config["student_model"] = cell.student_model.identity()
    return config


def reference_student(cell: Cell, teacher: nn.Module, teacher_key: str, artifacts: Artifacts, *,
                      progress: bool = True, force: bool = False) -> tuple[nn.Module, int]:
    """The student the cell's attack steals from the undefended teacher (same seed, queries, data order
    and budget as the attacked one), trained once and cached. Returns (student, queries used)."""
    config = reference_config(cell, teacher_key)
    key = config_key(config)
    student = _seeded_build(cell.student_arch, 0)
    info = artifacts.read_info(key)  # a damaged config.json means: train it again
    if info is None and (artifacts.dir(key) / "model.pt").exists():
        print(f"warning: {artifacts.dir(key) / 'config.json'} is unreadable; retraining that reference student",
              file=sys.stderr)
    if not force and info is not None and artifacts.load_model(key, student):
        student.eval()
        return student, int(info.get("queries_used", cell.attack.budget(cell.profile)))
    student, used = steal_student(cell, teacher, Defense(None, seed=cell.spec.seed), artifacts=artifacts,
                                  progress=progress, role="reference")
    artifacts.save_model(key, student, config, {"queries_used": used})
    return student, used


@torch.no_grad()
def evaluate(model: nn.Module | None, pool: Pool, task: Task, *, against: nn.Module | None = None) -> dict[str, Any]:
    """Mean PSNR/SSIM over the pool's images (``model=None`` scores the degraded input itself), with
    each image's PSNR (``psnr_per_image``, in pool order). With ``against`` (the undefended teacher), also
    each answer's PSNR against that model's answer (``fidelity_per_image``: how faithfully honest users get
    the teacher's output; 100 dB where they are identical, the metric's MSE floor), in the same pass."""
    ps, ss, fs = [], [], []
    for x, y in zip(pool.degraded, pool.clean):
        x, y = x[None], y[None]
        pred = task.baseline(x) if model is None else model(x)
        pred = pred.clamp(0, 1)
        ps.append(psnr(pred, y, y_channel=task.y_channel, shave=task.shave))
        ss.append(ssim(pred, y, y_channel=task.y_channel, shave=task.shave))
        if against is not None:
            fs.append(psnr(pred, against(x).clamp(0, 1), y_channel=task.y_channel, shave=task.shave))
    scores = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "psnr_per_image": [float(p) for p in ps]}
    if against is not None:
        scores["fidelity_per_image"] = [float(f) for f in fs]
    return scores


def scored(model: nn.Module | None, pool: Pool, task: Task, artifacts: Artifacts, model_key: str, who: str, *,
           force: bool = False, digest: str | None = None) -> dict[str, Any]:
    """:func:`evaluate`, remembered in the artifact folder of a cached model (``model_key``): the teacher
    and the reference and ground-truth students are shared by many cells, and scoring them again on the
    test images was a third of each cell's scoring time. Keyed by ``who``, the pool's images and the
    task's metric settings (``digest``: the pool's :func:`bench.calibrate.pool_digest`, when the caller has
    it); a file that cannot be read is recomputed."""
    # keyed by the weights actually scored (their saved digest), not only by the config that made them
    name = config_key({"kind": "scores", "recipe": SCORES_RECIPE, "who": who, "pool": digest or pool_digest(pool),
                       "y_channel": task.y_channel, "shave": task.shave,
                       "weights": artifacts.weights_digest(model_key)})
    path = artifacts.dir(model_key) / f"scores-{name}.json"
    if not force:
        try:
            cached = json.loads(path.read_text())
            scores = {"psnr": float(cached["psnr"]), "ssim": float(cached["ssim"]),
                      "psnr_per_image": [float(p) for p in cached["psnr_per_image"]]}
            if cached.get("sha256") == _scores_digest(scores):  # an edited file is recomputed
                return scores
            print(f"warning: cached scores {path} do not match their digest; recomputing them", file=sys.stderr)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    scores = evaluate(model, pool, task)
    # floats round-trip exactly through JSON
    atomic_write_bytes(path, json.dumps({**scores, "sha256": _scores_digest(scores)}).encode())
    return scores


def _scores_digest(scores: dict[str, Any]) -> str:
    body = json.dumps({k: scores[k] for k in ("psnr", "ssim", "psnr_per_image")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@torch.no_grad()
def save_samples(folder: Path, pool: Pool, task: Task, models: dict[str, nn.Module], index: int = 0) -> None:
    """PNGs of one test image through every model (input, target, teacher, served, students) for the
    report's visual grid; the input is shown at output size (SR: bicubic)."""
    import imageio.v3 as iio

    x, y = pool.degraded[index][None], pool.clean[index][None]
    images = {"input": task.baseline(x), "target": y}
    images.update({name: m(x) for name, m in models.items()})
    for name, img in images.items():
        arr = (img[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        atomic_write_bytes(folder / f"{name}.png", iio.imwrite("<bytes>", arr, extension=".png"))


def answers_unchanged(defense: Defense, attack: Attack) -> bool:
    """True when the attack cannot see anything the defense changes: the attacked student is then the
    reference student, bit for bit (training is deterministic), so it is not trained twice."""
    touched = set(defense.channels())
    if "answers" in touched:
        return False
    return not ("features" in touched and attack.access == "features")


# ----------------------------------------------------------------------------------------- a cell
def failure_reason(exc: BaseException, *, full: bool = False) -> str:
    """What went wrong, for a failed row or a sweep's report: the error's first line (``full``: all of
    it); running out of GPU memory says what to do about it."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (f"out of GPU memory on {job_device()} ({str(exc).splitlines()[0][:100]}); run fewer jobs per GPU "
                "(--jobs-per-gpu) or a smaller profile")
    text = f"{type(exc).__name__}: {exc}"
    return text if full else text.splitlines()[0]


def run_cell(spec: CellSpec | Cell, *, home: Path | str | None = None, force: bool = False,
             progress: bool = True, store: Store | None = None, rerun: bool = False) -> dict[str, Any]:
    """Run one cell and store its row (``done``, or ``failed`` with the error, which is re-raised).

    ``force`` recomputes everything (teacher, defense fit, reference student, cell); ``rerun`` only
    ignores a stored row and reuses cached models (a sweep's ``--force`` recomputes those once, in
    their own stage)."""
    cell = spec if isinstance(spec, Cell) else resolve(spec)
    store = store or Store(home)
    artifacts = Artifacts(store.home)
    shared = cell if force else share_teacher(cell, artifacts)  # --force retrains the cell's own teacher
    if shared is not cell:
        print(sharing_note(shared), file=sys.stderr)
        cell = shared
    key = cell.key
    if not (force or rerun):
        row = store.get_cell(key)
        if row is not None and row["status"] == "done":
            changed = stale_code(row, cell)
            if not changed:
                row["cached"] = True
                return row
            print(f"warning: the code of {', '.join(changed)} changed since this cell's result; recomputing it",
                  file=sys.stderr)
    started = time.time()
    row: dict[str, Any] = {
        "key": key, "task": cell.spec.task, "defense": cell.spec.defense, "attack": cell.spec.attack,
        "seed": cell.spec.seed, "profile": cell.profile.name, "config": cell.config(),
        "versions": {**versions(), "code": plugin_code(cell)}, "started": started, "budget": cell.spec.budget_db,
    }
    try:
        with on_device(cell.spec.device, precision=cell.profile.precision):
            metrics = _run(cell, artifacts, store, progress=progress, force=force)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        trace = traceback.format_exc(limit=8)
        row.update(status="failed", error=failure_reason(exc, full=True), finished=time.time(),
                   wall_s=time.time() - started, metrics={"traceback": trace})
        # a re-run (--force) that fails keeps the finished result; the attempt is kept apart
        store.put_failure(row, detail=trace)
        raise
    row.update(status="done", error=None, metrics=metrics, finished=time.time(),
               wall_s=time.time() - started)
    store.put_cell(row)
    row["cached"] = False
    return row


def _run(cell: Cell, artifacts: Artifacts, store: Store, *, progress: bool, force: bool) -> dict[str, Any]:
    task, profile, attack = cell.task, cell.profile, cell.attack
    timings: dict[str, float] = {}
    t = time.perf_counter()
    splits = task.splits()
    splits.check_disjoint()
    timings["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher, teacher_key, trained = get_teacher(task, profile, cell.spec.teacher_seed, artifacts,
                                                progress=progress, force=force,
                                                user_model=cell.teacher_model, numerics_=cell.teacher_numerics)
    check_deterministic(teacher, splits.test.degraded[0][None], cell)
    timings["teacher_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cell, calibration = calibrated_cell(cell, teacher, teacher_key, artifacts, store, progress=progress,
                                        force=force)
    defense = cell.defense
    timings["calibrate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    fit_defense(cell, teacher, teacher_key, artifacts, progress=progress, force=force)
    timings["defense_fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ref_student, queries_ref = reference_student(cell, teacher, teacher_key, artifacts, progress=progress,
                                                 force=force)
    timings["reference_student_s"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        gt: nn.Module | None = gt_student(cell, artifacts, progress=progress, force=force)
    except GroundTruthUnsupported:
        print(f"warning: attack '{cell.spec.attack}' queries even in ground-truth mode; the cell has no "
              "gt_student row (take training pairs from bench.kd.collect to get one)", file=sys.stderr)
        gt = None
    timings["gt_student_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if answers_unchanged(defense, attack):
        student, queries = ref_student, queries_ref
        shortcut = True
    else:
        student, queries = steal_student(cell, teacher, defense, artifacts=artifacts, progress=progress)
        shortcut = False
    timings["student_s"] = time.perf_counter() - t

    t = time.perf_counter()
    test = splits.test
    ref_key = config_key(reference_config(cell, teacher_key))
    shared = {"force": force, "digest": pool_digest(test)}  # the test images are hashed once per cell
    bits = profile.answer_bits
    # the teacher is scored on the answers it serves undefended (8-bit by default), so the teacher drop
    # is the defense's alone, not the rounding's
    with defense.serve(teacher, answer_bits=bits) as served, \
            Defense(None).serve(teacher, answer_bits=bits) as undefended:
        # the teacher, the reference and ground-truth students are shared by many cells: scored once
        scores = {"input": scored(None, test, task, artifacts, teacher_key, "input", **shared),
                  "teacher": scored(undefended, test, task, artifacts, teacher_key, f"teacher-{bits}bit", **shared),
                  "student_ref": scored(ref_student, test, task, artifacts, ref_key, "student", **shared)}
        # a defense that touches no answers serves the teacher's own forward pass (the same numbers)
        touches_answers = "answers" in defense.channels()
        if touches_answers:
            scores["served"] = evaluate(served, test, task, against=undefended)
            served_fidelity = scores["served"]["fidelity_per_image"]
        else:
            scores["served"], served_fidelity = scores["teacher"], [100.0] * len(test)
        scores["student"] = scores["student_ref"] if shortcut else evaluate(student, test, task)
        models = {"teacher": undefended, "served": served, "student_ref": ref_student, "student": student}
        if gt is not None:
            gt_key = config_key(gt_config(cell))
            scores["student_gt"] = scored(gt, test, task, artifacts, gt_key, "student", **shared)
            models["student_gt"] = gt
        save_samples(artifacts.dir(cell.key) / "samples", test, task, models)
    timings["score_s"] = time.perf_counter() - t

    metrics: dict[str, Any] = {}
    for who, s in scores.items():
        metrics[f"{who}_psnr"] = s["psnr"]
        metrics[f"{who}_ssim"] = s["ssim"]
    metrics["teacher_psnr_per_image"] = scores["teacher"]["psnr_per_image"]
    metrics["served_psnr_per_image"] = scores["served"]["psnr_per_image"]
    metrics["teacher_drop_db"] = scores["teacher"]["psnr"] - scores["served"]["psnr"]
    # a mean hides per-image damage (gains on some images cancel losses on others): keep every image's
    per_image = [t - s for t, s in zip(scores["teacher"]["psnr_per_image"], scores["served"]["psnr_per_image"])]
    metrics["teacher_drop_db_per_image"] = per_image
    metrics["worst_teacher_drop_db"] = max(per_image)
    metrics["served_fidelity_db"] = float(np.mean(served_fidelity))
    metrics["served_fidelity_db_per_image"] = served_fidelity
    metrics["answer_bits"] = bits
    metrics["student_drop_db"] = scores["student_ref"]["psnr"] - scores["student"]["psnr"]
    ref_ssim = scores["student_ref"]["ssim"]
    metrics["student_ssim_drop_pct"] = 100.0 * (ref_ssim - scores["student"]["ssim"]) / max(ref_ssim, 1e-12)
    metrics["queries_used"] = int(queries)
    metrics["channels"] = ",".join(defense.channels()) or "none"
    metrics["student_shortcut"] = shortcut
    metrics["teacher_cached"] = not trained
    metrics["teacher_key"] = teacher_key
    if calibration is not None:
        metrics["strength_param"] = calibration.parameter
        metrics["strength"] = calibration.value
        metrics["calib_drop_db"] = calibration.achieved_db
        metrics["calibration_key"] = calibration.key
    metrics.update(timings)
    return metrics
