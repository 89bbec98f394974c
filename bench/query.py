"""The attacker's only handle on the served model (DESIGN section 4).

:class:`QueryAPI` counts queries (one per image), enforces the budget, returns answers clamped to
[0, 1] (what a service returns as images), and returns exposed features only to attacks whose access
level is ``features``. It never hands out the model or its weights.

A batch is charged whole before it is answered: one that does not fit in what is left of the budget
raises :class:`QueryBudgetExceeded` and costs nothing, so an attack keeps (and trains on) everything
answered before it. ``cost`` is the number of queries one answered image costs (1 here; adaptive
wrappers such as :class:`bench.adaptive.TTAAverage` charge more), so ``remaining // cost`` images can
still be answered.

:class:`OfflineAPI` stands in for the served model when an attack trains on ground truth (the
``gt_student`` reference row): it has a budget, so the attack sizes its query set as usual, but
answers nothing.
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


class GroundTruthUnsupported(BenchError):
    """An attack queried in ground-truth mode: it cannot give the ``gt_student`` reference."""


class QueryAPI:
    def __init__(self, served: ServedModel, budget: int, access: str = "outputs") -> None:
        if access not in ACCESS_LEVELS:
            raise BenchError(f"unknown access level {access!r}; use one of {', '.join(ACCESS_LEVELS)}.")
        if int(budget) < 0:
            raise BenchError(f"the query budget must be >= 0, got {budget}.")
        self._served = served
        self.budget = int(budget)
        self.access = access
        self.used = 0

    #: queries charged per answered image
    cost = 1

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
                f"query budget exhausted: {self.used} of {self.budget} used, {n} more asked; "
                "raise attack.queries or ask fewer images."
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


class OfflineAPI:
    """No served model behind it: for attacks that train on ground truth (``AttackContext.ground_truth``).

    It has the budget and access of the real API so the attack picks the same query images, but any
    question to it is an error: an attack that queries in ground-truth mode would not be a ground-truth
    reference.
    """

    cost = 1
    used = 0

    def __init__(self, budget: int, access: str = "outputs") -> None:
        self.budget = int(budget)
        self.access = access
        self.exposed_layers: tuple[str, ...] = ()

    @property
    def remaining(self) -> int:
        return self.budget

    def query(self, x: torch.Tensor) -> torch.Tensor:
        raise GroundTruthUnsupported(
            "the ground-truth reference student must not query the served model; the attack should take its "
            "training pairs from bench.kd.collect, which honours ctx.ground_truth.")

    def query_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.query(x), {}
