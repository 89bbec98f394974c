"""Fine-tuned student: start from public pretrained weights, then distil on a small query budget.

The threat model (DESIGN section 2, access level 3): restoration models pretrained on public data are
everywhere, so an attacker need not start from scratch. Here the public model is the student
architecture pretrained, without any of the owner's data, on another task: that task's attacker pool
(degraded -> clean pairs of the attacker's own photographs, which the public has). The attacker then
fine-tunes it on the served model's answers with a few queries and few steps, by vanilla distillation
(:func:`bench.kd.distill`: L1, random aligned crops with flips/rotations).

Choices (each a parameter where it matters):

- ``pretrain_task`` (default ``auto``): derain <-> dehaze, lowlight <-> underwater, sr x2 <-> sr x4 (a
  public super-resolution model of the other scale), and derain for any other task (dehaze for derain).
  The task is built through the registry with its default parameters (and the other scale for ``sr``)
  and the cell's profile; it must differ from the attacked task.
- Pretraining: the one training loop on that pool's crops (with flips/rotations), ``pretrain_steps``
  (0: the profile's ``student_steps``) at the profile's ``student_lr``, from an initialisation and data
  order seeded by the cell seed (so seeds vary the public model too). It is cached (like a teacher) per
  (pretraining task, profile, steps, seed) and shared by the attacked, reference and ground-truth
  students of every defense.
- Architecture: the cell's student architecture (a user's ``--student`` too) when the pretraining task
  has the attacked task's scale; else (sr x2 <-> x4) the reference student at the pretraining scale.
- Transfer: every parameter whose name and shape match is copied into the student; the rest keep the
  student's initialisation (for sr x2 <-> x4: the sub-pixel tail, whose width depends on the scale).
  No match at all (a user's student on sr with the auto pairing) is an error.
- Fine-tuning: ``queries`` (0: a quarter of the profile's ``query_budget``, at least one image's worth:
  8 queries with ``tta_average``), ``steps`` (0: a quarter of
  the profile's ``student_steps``), ``lr`` (0: half the profile's ``student_lr``, as fine-tuning usually
  takes a smaller step than training from scratch).

The adaptive countermeasures of :mod:`bench.adaptive` (``tta_average``, ``output_filter``) are
parameters. In ground-truth mode the student is pretrained the same way, then fine-tuned on clean
images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench import BenchError
from bench.adaptive import AdaptiveParams
from bench.api import Attack, AttackContext, Task
from bench.data import Pool, stable_seed
from bench.kd import collect, distill
from bench.params import build, param
from bench.profiles import DATA_FIELDS, Profile, subset
from bench.query import QueryAPI
from bench.registry import TASKS
from bench.train import train

PRETRAIN_RECIPE = "1"  # bump when the pretraining recipe below changes
PAIRS = {"derain": "dehaze", "dehaze": "derain", "lowlight": "underwater", "underwater": "lowlight", "sr": "sr"}
PRETRAIN_FIELDS = DATA_FIELDS + ("crop", "batch", "student_channels", "student_blocks", "student_lr")


@dataclass(frozen=True)
class FinetuneParams(AdaptiveParams):
    queries: int = param(0, "query budget, in images sent to the served model (0: a quarter of the profile's "
                            "query_budget)")
    steps: int = param(0, "fine-tuning steps (0: a quarter of the profile's student_steps)")
    lr: float = param(0.0, "fine-tuning learning rate (0: half the profile's student_lr)")
    pretrain_task: str = param("auto", "task whose attacker pool the public weights were trained on "
                                       "('auto': a different task, see the module doc)")
    pretrain_steps: int = param(0, "pretraining steps (0: the profile's student_steps)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 0 or self.steps < 0 or self.lr < 0 or self.pretrain_steps < 0:
            raise ValueError("queries, steps, lr and pretrain_steps must be >= 0")
        if not self.pretrain_task:
            raise ValueError("pretrain_task must name a task (or 'auto')")


def source_task(target: Task, name: str, profile: Profile) -> Task:
    """The task the public weights were pretrained on (``auto``: see the module doc)."""
    overrides: dict[str, Any] = {}
    if name == "auto":
        name = PAIRS.get(target.name, "dehaze" if target.name == "derain" else "derain")
    if name == "sr" and target.name == "sr":
        overrides["scale"] = 4 if target.scale == 2 else 2
    cls = TASKS.get(name)
    task = cls(build(cls.Params, overrides, owner=f"task '{name}'"), profile=profile)
    if task.identity() == target.identity():
        raise BenchError(f"attack 'finetune': pretrain_task '{name}' is the attacked task; the public weights "
                         "must come from another task (--set attack.pretrain_task=...).")
    return task


class Finetune(Attack):
    """Student pretrained on another task's public pairs, fine-tuned on a few of the served model's answers."""

    Params: ClassVar[type] = FinetuneParams
    access: ClassVar[str] = "outputs"

    def budget(self, profile: Profile) -> int:
        one_image = 8 if self.params.tta_average else 1  # queries one (averaged) image costs
        return int(self.params.queries or max(one_image, profile.query_budget // 4))

    def pretrained(self, ctx: AttackContext) -> nn.Module:
        """The public model (see Architecture in the module doc), trained on the pretraining task or cached."""
        p, profile = self.params, ctx.profile
        source = source_task(ctx.task, p.pretrain_task, profile)
        steps = p.pretrain_steps or profile.student_steps
        config = {"kind": "pretrained_student", "recipe": PRETRAIN_RECIPE, "task": source.identity(),
                  "profile": subset(profile, PRETRAIN_FIELDS), "steps": steps, "seed": self.seed}

        same_scale = source.scale == ctx.task.scale and ctx.student_arch is not None
        arch = ctx.student_arch if same_scale else source.student_arch

        def build_fn() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stable_seed("pretrain-init", self.seed))
                return arch()

        if same_scale:  # the student's own architecture (a user's --student too) is part of the key
            probe = build_fn()
            config["arch"] = [type(probe).__qualname__] + [[k, list(v.shape)] for k, v in probe.state_dict().items()]

        def train_fn(model: nn.Module) -> dict[str, Any]:
            t = time.perf_counter()
            pool = source.splits().attacker
            losses = train(model, lambda g: pool.sample_crops(profile.batch, profile.crop, g), steps=steps,
                           lr=profile.student_lr, seed=stable_seed("pretrain-data", self.seed),
                           desc=f"pretraining public student ({source.name})", progress=ctx.progress)
            return {"train_s": time.perf_counter() - t, "final_loss": losses[-1] if losses else None}

        if ctx.cached_model is not None:
            return ctx.cached_model(config, build_fn, train_fn)
        model = build_fn()
        train_fn(model)
        return model.eval()

    def steal(self, api: QueryAPI, pool: Pool, student: nn.Module, ctx: AttackContext) -> nn.Module:
        p, profile = self.params, ctx.profile
        public = self.pretrained(ctx).state_dict()
        own = student.state_dict()
        fits = {k for k, v in own.items() if k in public and public[k].shape == v.shape}
        if not fits:
            raise BenchError("attack 'finetune': no parameter of the public pretrained model fits the student "
                             "(another architecture); choose a pretrain_task of the attacked task's scale.")
        student.load_state_dict({k: public[k] if k in fits else v for k, v in own.items()})
        inputs, answers, _ = collect(api, pool, ctx)
        distill(student, inputs, answers, ctx, steps=p.steps or max(1, profile.student_steps // 4),
                lr=p.lr or profile.student_lr / 2, desc="fine-tuning student")
        return student
