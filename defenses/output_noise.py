"""Output noise: every answer gets additive random noise of standard deviation ``sigma``.

The simplest answer-perturbing defense; it has no single original paper. In the model-stealing
literature for classifiers the noise goes on the posterior (a random-noise baseline of that kind is
among those Orekondy et al. compare against in "Prediction Poisoning: Towards Defenses Against DNN
Model Stealing Attacks", ICLR 2020). Adapted to restoration (DESIGN section 6), the noise goes on the
restored image.

Choices:

- ``distribution``: ``gaussian`` (default) draws N(0, sigma^2) per pixel and channel; ``uniform``
  draws U(-sqrt(3) sigma, sqrt(3) sigma), which has the same standard deviation, so ``sigma`` means the
  same in both and the served-vs-teacher MSE is sigma^2 either way (before the service clamps answers
  to [0, 1]; clamping can only bring an answer closer to the teacher's clamped answer).
- Independent noise per pixel and channel (white noise); nothing is spatially correlated.
- Deterministic per input (DESIGN section 2): each image's noise comes from ``query.generator(i)``,
  seeded by the image's content and the defense seed, so asking the same question twice, or one image
  alone versus inside a batch, gives the same answer, and averaging repeated queries gains nothing.
- ``sigma`` is the strength ``bench calibrate`` tunes (sigma = 0 is the undefended teacher). The noise
  is added to every answer, so it costs honest users exactly what it costs the attacker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from bench.api import Defense
from bench.params import param
from bench.serving import Query


@dataclass(frozen=True)
class Params:
    sigma: float = param(0.02, "noise standard deviation in image units ([0, 1] range); the strength")
    distribution: Literal["gaussian", "uniform"] = param(
        "gaussian", "gaussian N(0, sigma^2), or uniform with the same standard deviation sigma")

    def __post_init__(self) -> None:
        if not 0.0 <= self.sigma < float("inf"):
            raise ValueError(f"sigma must be finite and >= 0, got {self.sigma}")


def noise_like(y: torch.Tensor, sigma: float, distribution: str, generator: torch.Generator) -> torch.Tensor:
    """Noise of standard deviation ``sigma`` shaped like ``y`` (one image), drawn from ``generator``."""
    if distribution == "gaussian":
        n = torch.randn(y.shape, generator=generator, dtype=torch.float32, device=generator.device)
    else:
        n = (torch.rand(y.shape, generator=generator, dtype=torch.float32, device=generator.device) * 2 - 1)
        n = n * math.sqrt(3.0)
    return (sigma * n).to(y.dtype)


class OutputNoise(Defense):
    """Additive Gaussian (or uniform) noise on every answer, seeded by the query's content."""

    Params: ClassVar[type] = Params
    strength: ClassVar[str | None] = "sigma"
    strength_range: ClassVar[tuple[float, float] | None] = (0.0, 0.02)
    strength_spread: ClassVar[tuple[float, ...] | None] = (0.005, 0.01, 0.02, 0.04)
    version: ClassVar[str] = "1"

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def perturb_answers(self, answers: torch.Tensor, query: Query) -> torch.Tensor:
        if self.params.sigma == 0:
            return answers
        noise = torch.stack([noise_like(a, self.params.sigma, self.params.distribution,
                                        query.generator(i, answers.device))
                             for i, a in enumerate(answers)])
        return answers + noise
