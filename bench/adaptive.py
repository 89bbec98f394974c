"""Adaptive attacks: what a serious attacker does to its queries and to the answers, for every attack.

Perturbation defenses change each answer by something that depends on the input (ASVP's amplified
singular directions, content-seeded noise). Two countermeasures an attacker can add to any distillation
attack without changing how it trains:

- ``tta_average`` (test-time augmentation averaging): ask the served model the 8 flips/rotations of
  each image (the dihedral group of the square, :func:`bench.data.dihedral`), undo each transform on its
  answer and average the 8. The restoration itself is (nearly) equivariant to these transforms, so it
  survives the average; a perturbation that depends on the input's content is drawn afresh for each of
  the 8 (they are different inputs), so independent noise of variance s^2 falls to s^2 / 8. On a model
  that is exactly equivariant and undefended the answers do not change at all.

  Budget: every transformed image is a query and is charged as one. An image costs 8 queries, so with
  budget B the attacker distils from B // 8 images (fair to defenses: the same number of queries as
  every other attack). A batch is charged all at once, before any of it is asked: one that does not fit
  raises :class:`bench.query.QueryBudgetExceeded` and uses nothing.

  Features (feature-level attacks): the exposed features are those of the untransformed image (k = 0);
  they are not averaged, because a CNN's feature maps are not equivariant channel by channel (the
  features of a rotated image are not the rotated features), so averaging them would blur the target
  the student is fitted to.

- ``output_filter``: low-pass every answer before training (``gaussian`` with ``filter_sigma`` pixels,
  or a ``median`` over a ``filter_size`` x ``filter_size`` window; borders reflected), to remove
  high-frequency perturbations at the price of some of the restoration's detail. Applied after
  averaging when both are on. Only answers are filtered, never features.

Both are parameters shared by every built-in attack (their ``Params`` extend :class:`AdaptiveParams`),
so ``--set attack.tta_average=true --set attack.output_filter=gaussian`` works with any of them. The
pipeline wraps the attack's :class:`bench.query.QueryAPI` with :func:`wrap`; attacks see a query API
as before (with ``cost``, the queries one answered image costs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.data import dihedral, dihedral_inverse
from bench.filters import gaussian_blur, pad_reflect
from bench.params import param
from bench.query import QueryBudgetExceeded

FILTERS = ("none", "gaussian", "median")


@dataclass(frozen=True)
class AdaptiveParams:
    """Parameters every attack gets for the adaptive countermeasures (extend this in an attack's Params)."""

    tta_average: bool = param(False, "ask the 8 flips/rotations of each image, undo them, average the "
                                     "answers (costs 8 queries per image)")
    output_filter: str = param("none", "low-pass the answers before training", choices=FILTERS)
    filter_sigma: float = param(1.0, "Gaussian filter sigma in output pixels (output_filter=gaussian)")
    filter_size: int = param(3, "median window side in output pixels, odd (output_filter=median)")

    def __post_init__(self) -> None:
        if self.output_filter not in FILTERS:
            raise ValueError(f"output_filter must be one of {', '.join(FILTERS)}, got {self.output_filter!r}")
        if not self.filter_sigma > 0:
            raise ValueError(f"filter_sigma must be > 0, got {self.filter_sigma}")
        if self.filter_size < 3 or self.filter_size % 2 == 0:
            raise ValueError(f"filter_size must be odd and >= 3, got {self.filter_size}")


# ----------------------------------------------------------------------------------------- filters
def median_lowpass(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median over ``size`` x ``size`` windows of an (N, C, H, W) batch, borders reflected."""
    r = size // 2
    n, c, h, w = x.shape
    patches = F.unfold(pad_reflect(x, r), size)  # (N, C * size^2, H * W)
    return patches.view(n, c, size * size, h * w).median(dim=2).values.view(n, c, h, w)


def lowpass(x: torch.Tensor, kind: str, *, sigma: float = 1.0, size: int = 3) -> torch.Tensor:
    if kind == "gaussian":
        return gaussian_blur(x, sigma)
    if kind == "median":
        return median_lowpass(x, size)
    if kind == "none":
        return x
    raise ValueError(f"unknown filter {kind!r}")


# ------------------------------------------------------------------------------------ API wrappers
class _Wrapper:
    """A query API around another one: budget and access pass through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    budget = property(lambda self: self.inner.budget)
    used = property(lambda self: self.inner.used)
    remaining = property(lambda self: self.inner.remaining)
    access = property(lambda self: self.inner.access)
    exposed_layers = property(lambda self: self.inner.exposed_layers)
    cost = property(lambda self: getattr(self.inner, "cost", 1))


class TTAAverage(_Wrapper):
    """Answers averaged over the 8 flips/rotations of each image; 8 queries per image."""

    @property
    def cost(self) -> int:  # type: ignore[override]
        return 8 * getattr(self.inner, "cost", 1)

    def _check(self, x: torch.Tensor) -> None:
        need = len(x) * self.cost
        if need > self.remaining:
            raise QueryBudgetExceeded(
                f"query budget exhausted: {self.used} of {self.budget} used, {need} more asked "
                f"({len(x)} images x {self.cost} transformed queries); raise attack.queries or ask fewer images."
            )

    def _others(self, x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        total = first.clone()
        for k in range(1, 8):
            total += dihedral_inverse(self.inner.query(dihedral(x, k)), k)
        return total / 8

    def query(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self._others(x, self.inner.query(x))

    def query_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check(x)
        y, feats = self.inner.query_features(x)  # features of the untransformed image only
        return self._others(x, y), feats


class OutputFilter(_Wrapper):
    """Answers low-passed (Gaussian or median) before the attack sees them."""

    def __init__(self, inner: Any, kind: str, *, sigma: float, size: int) -> None:
        super().__init__(inner)
        self.kind, self.sigma, self.size = kind, sigma, size

    def _filter(self, y: torch.Tensor) -> torch.Tensor:
        return lowpass(y, self.kind, sigma=self.sigma, size=self.size).clamp(0, 1)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self._filter(self.inner.query(x))

    def query_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y, feats = self.inner.query_features(x)
        return self._filter(y), feats


def wrap(api: Any, params: Any) -> Any:
    """``api`` with the adaptive countermeasures that ``params`` switch on (unchanged if none are)."""
    if getattr(params, "tta_average", False):
        api = TTAAverage(api)
    kind = getattr(params, "output_filter", "none")
    if kind != "none":
        api = OutputFilter(api, kind, sigma=params.filter_sigma, size=params.filter_size)
    return api
