"""Vanilla knowledge distillation: the student learns the served model's answers with an L1 loss.

Output-only access. The attacker crops ``queries`` images of ``profile.query_size`` input pixels from
its own pool (positions drawn from the cell seed), asks the served model once per image, then trains
the student on random aligned crops (with flips/rotations) of the (query, answer) pairs. Budget and
training length default to the profile's; the paired reference student uses the same seed, so both
see the same queries in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.api import Attack, AttackContext
from bench.data import Pool
from bench.kd import ask, distill, pick_queries
from bench.params import param
from bench.query import QueryAPI


@dataclass(frozen=True)
class VanillaKDParams:
    queries: int = param(0, "query budget in images (0: the profile's query_budget)")
    steps: int = param(0, "student training steps (0: the profile's student_steps)")
    lr: float = param(0.0, "student learning rate (0: the profile's student_lr)")

    def __post_init__(self) -> None:
        if self.queries < 0 or self.steps < 0 or self.lr < 0:
            raise ValueError("queries, steps and lr must be >= 0")


class VanillaKD(Attack):
    Params = VanillaKDParams
    access = "outputs"

    def steal(self, api: QueryAPI, pool: Pool, student: nn.Module, ctx: AttackContext) -> nn.Module:
        p = ctx.profile
        gen = torch.Generator().manual_seed(ctx.seed)
        inputs = pick_queries(pool, ctx.budget, p.query_size, gen)
        inputs, answers, _ = ask(api, inputs, batch=p.query_batch, progress=ctx.progress)
        distill(student, inputs, answers, ctx, steps=self.params.steps or p.student_steps,
                lr=self.params.lr or p.student_lr)
        return student
