"""Shared distillation machinery for attacks: pick queries, ask the served model, train the student.

Every attack uses these, so that a reference student and an attacked student with the same seed see
the same query images in the same order, and differ only in the answers they were given.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from bench.api import AttackContext
from bench.data import Pool, sample_pair_crops
from bench.progress import bar
from bench.query import QueryAPI, QueryBudgetExceeded
from bench.train import LossFn, l1_loss, train


def pick_queries(pool: Pool, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` attacker query images: random crops from the pool's degraded images (the attacker has no
    clean images), ``size`` output pixels square (``size / scale`` input pixels for SR)."""
    inputs, _ = sample_pair_crops(pool.degraded, pool.clean, n, size, generator,
                                  scale=pool.scale, augment=False, setting="profile.query_size")
    return inputs


def ask(api: QueryAPI, inputs: torch.Tensor, *, batch: int, features: bool = False,
        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Query the served model on ``inputs`` in batches until done or the budget runs out.

    Returns (the inputs that were answered, their answers, exposed features by layer, concatenated).
    Running out of budget is not an error here: the student trains on what was answered.
    """
    answered, answers, feats = [], [], {}
    with bar(total=len(inputs), desc="querying served model", show=progress, unit="img") as pbar:
        for start in range(0, len(inputs), batch):
            x = inputs[start:start + batch]
            x = x[: max(0, min(len(x), api.remaining))]
            if len(x) == 0:
                break
            try:
                if features:
                    y, f = api.query_features(x)
                    for k, v in f.items():
                        feats.setdefault(k, []).append(v)
                else:
                    y = api.query(x)
            except QueryBudgetExceeded as exc:
                print(f"warning: {exc}; training on the {len(answered)} answered batches", file=sys.stderr)
                break
            answered.append(x)
            answers.append(y)
            pbar.update(len(x))
    if not answered:
        from bench import BenchError

        raise BenchError("the attack got no answers: the query budget is 0; raise attack.queries.")
    return (torch.cat(answered), torch.cat(answers), {k: torch.cat(v) for k, v in feats.items()})


def distill(
    student: nn.Module,
    inputs: torch.Tensor,
    answers: torch.Tensor,
    ctx: AttackContext,
    *,
    steps: int,
    lr: float,
    loss_fn: LossFn = l1_loss,
    extra_targets: dict[str, torch.Tensor] | None = None,
    params: list[nn.Parameter] | None = None,
    desc: str = "training student",
) -> list[float]:
    """Train ``student`` on random aligned crops of (query, answer) pairs, seeded by ``ctx.seed``.

    With ``extra_targets`` (e.g. exposed features, same spatial layout as the queries), batches are
    (inputs, answers, {name: target crops}) instead of (inputs, answers).
    """
    p = ctx.profile
    scale = ctx.task.scale
    crop = min(p.crop, inputs.shape[-1] * scale, inputs.shape[-2] * scale)

    if extra_targets:
        names = sorted(extra_targets)

        def next_batch(g: torch.Generator):
            idx = torch.randint(len(inputs), (p.batch,), generator=g)
            return inputs[idx], answers[idx], {n: extra_targets[n][idx] for n in names}
    else:
        def next_batch(g: torch.Generator):
            return sample_pair_crops(inputs, answers, p.batch, crop, g, scale=scale)

    return train(student, next_batch, steps=steps, lr=lr, seed=ctx.seed, loss_fn=loss_fn,
                 params=params, desc=desc, progress=ctx.progress)
