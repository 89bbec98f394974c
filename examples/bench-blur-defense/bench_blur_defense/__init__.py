"""Example third-party defense: Gaussian blur of every answer (a deliberately naive baseline).

It shows the whole plugin contract: a params dataclass, the channels the defense touches, its
strength parameter (for calibration) and the perturbation itself. It imports only ``bench`` and torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api import Defense
from bench.params import param
from bench.serving import Query


@dataclass(frozen=True)
class BlurParams:
    sigma: float = param(0.8, "standard deviation of the Gaussian blur, in pixels")

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError("sigma must be >= 0")


class BlurAnswers(Defense):
    """Blur every answer with a Gaussian of standard deviation sigma."""

    Params = BlurParams
    strength = "sigma"

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def perturb_answers(self, answers: torch.Tensor, query: Query) -> torch.Tensor:
        sigma = self.params.sigma
        if sigma == 0:
            return answers
        radius = max(1, int(3 * sigma + 0.5))
        x = torch.arange(-radius, radius + 1, dtype=answers.dtype)
        k = torch.exp(-(x**2) / (2 * sigma**2))
        k = k / k.sum()
        c = answers.shape[1]
        padded = F.pad(answers, (radius, radius, radius, radius), mode="replicate")
        out = F.conv2d(padded, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
