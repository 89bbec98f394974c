"""Defenses that fail on purpose, for the sweep tests (tests/test_sweep.py).

They live in an importable module with its own entry points (``bench_fault_plugins-0.0.dist-info``
beside it), so that sweep workers in other processes find them exactly as they find a third-party
plugin: put this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from bench.api import Defense, FitContext
from bench.train import train


class Explode(Defense):
    """Raises on every answer: the attack (and so the cell) fails."""

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def perturb_answers(self, answers: torch.Tensor, query) -> torch.Tensor:
        raise RuntimeError("explode: injected failure")


class Crash(Defense):
    """Kills the worker process on its first answer, as the out-of-memory killer would."""

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def perturb_answers(self, answers: torch.Tensor, query) -> torch.Tensor:
        os._exit(9)


class Hang(Defense):
    """Never answers (a plugin stuck waiting): the sweep's job time limit must fail its cell."""

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def perturb_answers(self, answers: torch.Tensor, query) -> torch.Tensor:
        while True:
            time.sleep(60)


class Diverge(Defense):
    """A training-time defense whose training loss is NaN: TrainingDiverged in the defense-fit stage."""

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def fit(self, teacher: nn.Module, splits, ctx: FitContext) -> None:
        def nan_loss(model: nn.Module, batch) -> torch.Tensor:
            return model.weight.sum() * float("nan")

        ctx.cached_model({"kind": "diverge-surrogate"}, lambda: nn.Linear(1, 1),
                         lambda m: train(m, lambda g: None, steps=3, lr=1e-3, seed=0, loss_fn=nan_loss,
                                         progress=False))
