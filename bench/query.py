"""The attacker's only handle on the served model (DESIGN section 4).

:class:`QueryAPI` counts queries (one per image), enforces the budget, returns answers clamped to
[0, 1] (what a service returns as images), and returns exposed features only to attacks whose access
level is ``features``. It never hands out the model or its weights.
"""

from __future__ import annotations

import torch

from bench import BenchError
from bench.serving import ServedModel

ACCESS_LEVELS = ("outputs", "features")


class QueryBudgetExceeded(BenchError):
    pass


class FeatureAccessDenied(BenchError):
    pass


class QueryAPI:
    def __init__(self, served: ServedModel, budget: int, access: str = "outputs") -> None:
        if access not in ACCESS_LEVELS:
            raise BenchError(f"unknown access level {access!r}; use one of {', '.join(ACCESS_LEVELS)}.")
        self._served = served
        self.budget = int(budget)
        self.access = access
        self.used = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    @property
    def exposed_layers(self) -> tuple[str, ...]:
        return self._served.exposed_layers if self.access == "features" else ()

    def _charge(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise BenchError(f"queries must be image batches (N, 3, H, W), got shape {tuple(x.shape)}")
        n = x.shape[0]
        if self.used + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget exhausted: {self.used} of {self.budget} used, {n} more asked."
            )
        self.used += n

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Answers for a batch of degraded images."""
        self._charge(x)
        return self._served(x).clamp(0, 1)

    @torch.no_grad()
    def query_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Answers plus the exposed features by layer name (feature access only)."""
        if self.access != "features":
            raise FeatureAccessDenied(
                "this attack has output-only access: the served model's features are not exposed to it."
            )
        self._charge(x)
        y, feats = self._served.forward_with_features(x)
        return y.clamp(0, 1), feats
