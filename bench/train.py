"""The one training loop: teachers, students, surrogates and changed teachers all train here.

Adam with cosine learning-rate decay and gradient clipping; a non-finite loss stops training with a
:class:`TrainingDiverged` error (a sweep records it as a failed cell).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError
from bench.numerics import autocast
from bench.progress import bar


class TrainingDiverged(BenchError):
    pass


Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def l1_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    return F.l1_loss(model(inputs), targets)


@contextmanager
def _channels_last(model: nn.Module) -> Iterator[None]:
    """Train with channels-last weights: CPU convolutions then take oneDNN's NHWC kernels, and a step of
    the quick profile's student is ~1.5x faster on one core (tests/test_bench_training.py). The parameters
    keep their identity (the optimiser's are the model's); their layout goes back to the default
    afterwards, so saved weights and every later forward pass are as before."""
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


#: steps between reads of the loss on the host (and checks that it is finite)
CHECK_EVERY = 25


def _diverged(value: float, step: int, desc: str) -> None:
    raise TrainingDiverged(f"{desc}: loss became {value} at step {step}; lower the learning rate "
                           "(--set profile.teacher_lr / student_lr).")


def _check(loss: torch.Tensor, step: int, desc: str) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        _diverged(value, step, desc)


def train(
    model: nn.Module,
    next_batch: Callable[[torch.Generator], Batch],
    *,
    steps: int,
    lr: float,
    seed: int,
    loss_fn: LossFn = l1_loss,
    params: Iterable[torch.nn.Parameter] | None = None,
    desc: str = "training",
    progress: bool = True,
    clip: float = 1.0,
) -> list[float]:
    """Train ``model`` for ``steps`` steps on batches from ``next_batch(generator)``; returns losses.

    ``seed`` fixes the data order (the generator handed to ``next_batch``); the model's
    initialisation is the caller's. ``params`` defaults to the model's parameters (attacks add
    adapters).
    """
    model.train()
    params = list(params) if params is not None else list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    floor = 0.05  # final lr as a fraction of the initial one

    def schedule(step: int) -> float:
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    pending: list[torch.Tensor] = []
    device = next((p.device for p in params), torch.device("cpu"))
    with bar(total=steps, desc=desc, show=progress, unit="step") as pbar, _channels_last(model):
        for step in range(steps):
            batch = next_batch(gen)
            with autocast(device):  # float32 unless the profile asks for bfloat16 (bench.numerics)
                loss = loss_fn(model, batch)
            if step == 0:
                _check(loss, step, desc)  # a bad setting fails at once, not a block later
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            pending.append(loss.detach())
            if len(pending) == CHECK_EVERY or step == steps - 1:
                # losses reach the host in blocks: on a GPU a per-step read would wait for every step
                values = torch.stack(pending).tolist()
                for i, value in enumerate(values):
                    if not math.isfinite(value):
                        _diverged(value, step - len(values) + 1 + i, desc)
                losses.extend(values)
                pending.clear()
                pbar.set_postfix(loss=f"{values[-1]:.4f}", refresh=False)
            pbar.update(1)
    model.eval()
    return losses
