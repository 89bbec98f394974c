"""Shared distillation machinery for attacks: pick queries, ask the served model, train the student.

Every attack uses these, so that a reference student and an attacked student with the same seed see
the same query images in the same order, and differ only in the answers they were given.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from bench import BenchError
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
    Running out of budget is not an error here: a warning says how many images were answered and the
    student trains on those. ``api.cost`` (queries per image, e.g. 8 with TTA averaging) is respected.
    """
    cost = max(1, int(getattr(api, "cost", 1)))
    answered, answers, feats = [], [], {}
    done = 0
    with bar(total=len(inputs), desc="querying served model", show=progress, unit="img") as pbar:
        for start in range(0, len(inputs), batch):
            x = inputs[start:start + batch]
            x = x[: max(0, min(len(x), api.remaining // cost))]
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
                print(f"warning: {exc}", file=sys.stderr)
                break
            answered.append(x)
            answers.append(y)
            done += len(x)
            pbar.update(len(x))
    if not answered:
        raise BenchError("the attack got no answers: the query budget is used up or 0 (with tta_average an "
                         "image costs 8 queries); raise attack.queries.")
    if done < len(inputs):
        print(f"warning: query budget reached after {done} of {len(inputs)} images "
              f"({api.used} of {api.budget} queries); training on the {done} answered", file=sys.stderr)
    return (torch.cat(answered), torch.cat(answers), {k: torch.cat(v) for k, v in feats.items()})


def collect(api: QueryAPI, pool: Pool, ctx: AttackContext, *, features: bool = False,
            images: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The attacker's training pairs: picks ``images`` query images (default: as many as the budget
    affords, ``api.remaining // api.cost``), the crops :func:`pick_queries` draws from ``ctx.seed``, and asks them.

    In ground-truth mode (``ctx.ground_truth``, the ``gt_student`` reference) the same images are paired
    with their clean crops instead, and nothing is asked (no features either). Returns (inputs, targets,
    features by layer).
    """
    cost = max(1, int(getattr(api, "cost", 1)))
    n = api.remaining // cost if images is None else int(images)
    if n <= 0:
        raise BenchError(f"the query budget ({api.budget} queries, {cost} per image) affords no image; "
                         "raise attack.queries.")
    gen = torch.Generator().manual_seed(ctx.seed)
    inputs, clean = sample_pair_crops(pool.degraded, pool.clean, n, ctx.profile.query_size, gen,
                                      scale=pool.scale, augment=False, setting="profile.query_size")
    if ctx.ground_truth:
        return inputs, clean, {}
    return ask(api, inputs, batch=ctx.profile.query_batch, features=features, progress=ctx.progress)


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
    augment: bool = True,
    desc: str = "training student",
) -> list[float]:
    """Train ``student`` on random aligned crops of (query, answer) pairs, seeded by ``ctx.seed``.

    With ``extra_targets`` (e.g. exposed features of each query, a whole multiple of its size), the
    same crops are cut from them too and batches are (inputs, answers, {name: target crops}) instead of
    (inputs, answers); the crops drawn do not depend on them. ``augment``: a random flip/rotation per
    crop (of those the task allows), applied to every part of the batch alike.
    """
    p = ctx.profile
    scale = ctx.task.scale
    crop = min(p.crop, inputs.shape[-1] * scale, inputs.shape[-2] * scale)
    transforms = ctx.task.augment_transforms if augment else ()

    if extra_targets:
        names = sorted(extra_targets)
        maps = [extra_targets[n] for n in names]

        def next_batch(g: torch.Generator):
            x, y, crops = sample_pair_crops(inputs, answers, p.batch, crop, g, scale=scale, augment=transforms,
                                            extras=maps)
            return x, y, dict(zip(names, crops))
    else:
        def next_batch(g: torch.Generator):
            return sample_pair_crops(inputs, answers, p.batch, crop, g, scale=scale, augment=transforms)

    label = f"{desc} [{ctx.role}]" if ctx.role else desc  # which of the cell's three students
    return train(student, next_batch, steps=steps, lr=lr, seed=ctx.seed, loss_fn=loss_fn,
                 params=params, desc=label, progress=ctx.progress)
