"""The stages of a cell (DESIGN section 2), each with the one function that keys its artifact or job.

Both the runner (:func:`bench.pipeline.run_cell`, and the sweep's stage jobs) and the planner
(:func:`bench.scheduler.plan`) take every key from here, so a sweep plans exactly what its cells use:

========================  =============================================  =========================
stage                     runs                                           key
========================  =============================================  =========================
teacher                   :func:`get_teacher`                            :func:`teacher_key`
calibration (a budget)    :func:`bench.calibrate.calibrated_cell`        :func:`calibration_job_key`
defense fit               :func:`fit_defense`                            :func:`fit_key`
reference student         :func:`reference_student`                      :func:`reference_key`
ground-truth student      :func:`gt_student`                             :func:`gt_key`
attacked student          :func:`steal_student`                          (the cell's own key)
========================  =============================================  =========================

``fit_key`` and ``calibration_job_key`` key a sweep's *job* (one per fit or calibration); what a defense's
``fit`` trains is keyed by the defense's own config below the teacher's key (:func:`fit_defense`).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench import BenchError, adaptive
from bench.api import AttackContext, Defense, FitContext, Task
from bench.cache import Artifacts, config_key
from bench.data import stable_seed
from bench.numerics import job_device, numerics
from bench.profiles import ANSWER_FIELDS, STUDENT_FIELDS, TEACHER_FIELDS, Profile, subset
from bench.query import OfflineAPI, QueryAPI
from bench.train import train
from bench.usermodel import UserModel

if TYPE_CHECKING:
    from bench.cell import Cell

TEACHER_RECIPE = "1"  # bump when the teacher training recipe in this file changes
STUDENT_RECIPE = "1"


def _seeded_build(build_fn, seed: int) -> nn.Module:
    """``build_fn()`` initialised from ``seed`` on the CPU (the same weights on every device), then moved
    to the job's device."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = build_fn()
    return model.to(job_device())


# ----------------------------------------------------------------------------------------- teacher
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


def teacher_key(cell: Cell) -> str:
    """The key of the teacher ``cell``'s students learn from (its own numerics', or a shared teacher's)."""
    return config_key(cell.teacher_config())


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
        with torch.no_grad():  # before hours of training: a model that answers a test image at the wrong size
            check_answer(model(task.splits().test.degraded[0][None]), task, "teacher", user_model)
        t = time.perf_counter()
        losses = train(model, lambda g: owner.sample_crops(profile.batch, profile.crop, g),
                       steps=profile.teacher_steps, lr=profile.teacher_lr,
                       seed=stable_seed("teacher-data", teacher_seed),
                       desc=f"training teacher ({task.name})", progress=progress)
        return {"train_s": time.perf_counter() - t, "final_loss": losses[-1] if losses else None}

    return artifacts.cached_model(config, build_fn, train_fn, force=force)


def _named(user_model: UserModel | None) -> str:
    """`` (FACTORY)`` for a user's model in a message, nothing for the reference architecture."""
    return f" ({user_model.identity().get('factory')})" if user_model is not None else ""


def check_answer(answer: torch.Tensor, task: Task, role: str, user_model: UserModel | None) -> None:
    """A one-line error naming the model for an answer to the first test image that is not the size of its
    target (a model right at the probe sizes but not at a test image's: it failed after training, in the
    metrics) or not finite."""
    clean = task.splits().test.clean[0]
    where = _named(user_model)
    if tuple(answer.shape[-2:]) != tuple(clean.shape[-2:]):
        x = task.splits().test.degraded[0]
        raise BenchError(f"the {task.name} {role}{where} answers the first test image ({x.shape[-1]}x{x.shape[-2]} px) "
                         f"with {answer.shape[-1]}x{answer.shape[-2]} px, not its target's "
                         f"{clean.shape[-1]}x{clean.shape[-2]}: a model must answer at the task's scale at every "
                         "size (pad inside it, or declare size_multiple).")
    if not bool(torch.isfinite(answer).all()):
        raise BenchError(f"the {task.name} {role}{where} answers the first test image with NaN or inf values: the "
                         "model is at fault, not a defense; check its forward (and its weights) at that size.")


@torch.no_grad()
def check_deterministic(teacher: nn.Module, probe: torch.Tensor, cell: Cell) -> None:
    """A one-line error for a teacher whose eval forward is not a function of its input (dropout or noise left
    on in eval mode): every drop the suite measures is a difference of two forwards, so such a teacher makes
    a defense that changes nothing look costly (measured: 0.106 and 0.044 dB from two runs of one key)."""
    first, second = teacher(probe), teacher(probe)
    check_answer(first, cell.task, "teacher", cell.teacher_model)
    same = torch.equal(first, second) if probe.device.type == "cpu" else \
        torch.allclose(first, second, rtol=1e-5, atol=1e-6)  # GPU kernels: deterministic up to rounding
    if not same:
        gap = float((first.float() - second.float()).abs().max())
        where = _named(cell.teacher_model)
        raise BenchError(f"the {cell.spec.task} teacher{where} is not deterministic: two forwards of one test image "
                         f"differ by up to {gap:.3g} in eval mode (dropout or noise left on?); make its eval "
                         "forward a function of its input (model.eval() must switch randomness off).")


# ------------------------------------------------------------------------------------- defense fit
def defense_fits(cell: Cell) -> bool:
    """True when the cell's defense trains something before serving (training-time defenses)."""
    return type(cell.defense).fit is not Defense.fit


def fit_key(cell: Cell, teacher_key: str) -> str:
    """The key of the sweep's defense-fit job of ``cell`` (one per teacher, defense + params, seed, profile)."""
    return config_key({"kind": "defense-fit", "teacher": teacher_key, "defense": cell.defense.identity(),
                       "task": cell.task.identity(), "seed": cell.spec.seed, "profile": cell.config()["profile"],
                       **cell.student_numerics()})


def fit_defense(cell: Cell, teacher: nn.Module, teacher_key: str, artifacts: Artifacts, *,
                progress: bool = True, force: bool = False) -> None:
    """Let the cell's defense train what it needs (surrogates, changed teachers), cached per config."""
    def cached_model(config, build_fn, train_fn):
        return artifacts.cached_model({"teacher": teacher_key, **cell.student_numerics(), **config}, build_fn,
                                      train_fn, force=force)[0]

    ctx = FitContext(profile=cell.profile, seed=cell.spec.seed, task=cell.task, progress=progress,
                     cached_model=cached_model)
    cell.defense.fit(teacher, cell.task.splits(), ctx)


# ------------------------------------------------------------------------------------- calibration
def calibration_job_key(cell: Cell, teacher_key: str) -> str:
    """One calibration job per (teacher, defense without its strength, budget, task, profile): it calibrates
    (:func:`bench.calibrate.calibrated_cell`, whose stored calibration has its own key) and fits the defense at
    the calibrated strength."""
    return config_key({"kind": "calibration-job", "teacher": teacher_key,
                       "defense": cell.defense.calibration_identity(), "budget_db": cell.spec.budget_db,
                       "task": cell.task.identity(), "profile": cell.config()["profile"],
                       **cell.student_numerics()})


# ------------------------------------------------------------------------------- reference student
def reference_config(cell: Cell, teacher_key: str) -> dict[str, Any]:
    config = {"kind": "student", "recipe": STUDENT_RECIPE, "teacher": teacher_key,
              "attack": cell.attack.identity(), "seed": cell.spec.seed,
              "profile": subset(cell.profile, STUDENT_FIELDS + ANSWER_FIELDS), **cell.student_numerics()}
    if cell.student_model is not None:
        config["student_model"] = cell.student_model.identity()
    return config


def reference_key(cell: Cell, teacher_key: str) -> str:
    return config_key(reference_config(cell, teacher_key))


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


# ---------------------------------------------------------------------------- ground-truth student
def gt_config(cell: Cell) -> dict[str, Any]:
    config = {"kind": "gt_student", "recipe": STUDENT_RECIPE, "task": cell.task.identity(),
              "attack": cell.attack.identity(), "seed": cell.spec.seed,
              "profile": subset(cell.profile, STUDENT_FIELDS), "numerics": cell.numerics}
    if cell.student_model is not None:
        config["student_model"] = cell.student_model.identity()
    return config


def gt_key(cell: Cell) -> str:
    return config_key(gt_config(cell))


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


# -------------------------------------------------------------------------------- attacked student
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
