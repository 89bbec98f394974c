"""Vanilla knowledge distillation: the student learns the served model's answers with an L1 loss.

Output-only access. The attacker crops as many images of ``profile.query_size`` output pixels from its
own pool as the budget affords (positions drawn from the cell seed), asks the served model once per
image, then trains the student on random aligned crops (with flips/rotations) of the (query, answer)
pairs. Budget and training length default to the profile's; the paired reference student uses the same
seed, so both see the same queries in the same order. The adaptive countermeasures of
:mod:`bench.adaptive` (``tta_average``, ``output_filter``) are parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.adaptive import AdaptiveParams
from bench.api import Attack, AttackContext
from bench.data import Pool
from bench.kd import collect, distill
from bench.params import param
from bench.query import QueryAPI


@dataclass(frozen=True)
class VanillaKDParams(AdaptiveParams):
    queries: int = param(0, "query budget, in images sent to the served model (0: the profile's query_budget)")
    steps: int = param(0, "student training steps (0: the profile's student_steps)")
    lr: float = param(0.0, "student learning rate (0: the profile's student_lr)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 0 or self.steps < 0 or self.lr < 0:
            raise ValueError("queries, steps and lr must be >= 0")


class VanillaKD(Attack):
    Params = VanillaKDParams
    access = "outputs"

    def steal(self, api: QueryAPI, pool: Pool, student: nn.Module, ctx: AttackContext) -> nn.Module:
        p = ctx.profile
        inputs, answers, _ = collect(api, pool, ctx)
        distill(student, inputs, answers, ctx, steps=self.params.steps or p.student_steps,
                lr=self.params.lr or p.student_lr)
        return student
