"""Adaptive misinformation: only queries that look out of the owner's distribution get misleading answers.

Paper: Sanjay Kariyappa, Moinuddin K. Qureshi, "Defending Against Model Stealing Attacks with Adaptive
Misinformation", CVPR 2020. For a classifier f, the served posterior is the blend
y = (1 - a) f(x) + a f_mis(x), a = sigmoid(nu (tau - s(x))), where s(x) is an out-of-distribution (OOD)
score (the maximum softmax probability: low means OOD), tau a threshold set on the owner's in-distribution
data, nu a sharpness, and f_mis a misinformation model trained to put its mass on wrong classes. The premise:
stealing attacks query with data unlike the owner's (synthetic or surrogate images), so honest users,
whose queries are in distribution, pay (almost) nothing.

Adapted to restoration (DESIGN section 6), every choice stated:

- OOD score s(x): how far the teacher's middle features of x lie from the owner's. The defense runs
  server side and sees the teacher: x goes through it once more (one extra forward per query; a service
  would read the same features from its own forward) with hooks on the middle body block(s)
  (:func:`bench.models.middle_layers`: the central one or two of ``body.*``, or of a user model's declared
  ``feature_layers``). Each block's output is pooled per channel to its spatial mean and standard deviation
  (the mean says what the content is, the standard deviation how much texture the block sees), and the
  blocks' vectors are concatenated into v(x). The score is a diagonal Mahalanobis distance,
  s(x) = sqrt(mean_j ((v_j - mu_j) / sd_j)^2), to the mean and per-dimension spread of v over the owner's
  images. (The max softmax probability has no counterpart for an image answer; a full-covariance
  Mahalanobis distance needs more samples than the few owner photographs give for its 16-128 dimensions, so the
  covariance is diagonal; sd_j is floored at 1e-3 of the mean sd, so a dead channel cannot dominate.)
- The owner's statistics (``fit``): ``fit_crops`` crops of the ``owner`` pool's degraded images, the side of
  each drawn uniformly between the profile's training ``crop`` and the image's short side (so small query
  crops and whole images alike lie in the fitted range), positions and images from a fixed generator. mu and
  sd come from their pooled features. The owner's in-distribution score distribution, which the threshold
  is read from, is that of *unseen* owner images: each image's crops scored against the statistics of the
  other images' crops (leave one image out; sorted). The paper sets its threshold on held-out
  in-distribution data; with the few owner photographs here, the fitted crops' own scores are far lower than
  any unseen image's, and version 1, which read the threshold from them, flagged nearly every test image: on
  underwater (quick, teacher seeds 0-2) flag_rate 0.02 cost the test split's honest users 5.5 dB and the
  attacker's queries 0.9 dB. All of it depends only on the teacher and these settings, never on the
  cell seed or the strength, and is cached beside the teacher (``FitContext.cached_model``).
- The threshold, and the strength ``bench calibrate`` tunes: ``flag_rate`` q, the fraction of the owner's own
  crops at or above the threshold: tau = the (1 - q) quantile of their scores (linear interpolation). The
  paper also sets tau on in-distribution data, trading the honest users' accuracy for security; here
  calibration picks q so that the teacher's cost on ``calib`` (unseen in-distribution images) meets a budget.
  For q > 1 the threshold keeps falling below the lowest owner score by (q - 1) owner interquartile ranges,
  so the cost keeps growing with q (calibration's doubling scan can pass 1). q = 0 switches the defense
  off: a = 0 and the answers are the teacher's, bit for bit (``strength_identity``). Below one owner score
  in n (q < 1/n, where the empirical quantile has nothing left to read) the threshold rises on from the
  1 - 1/n quantile by one interquartile range per halving of n q (tau = Q(1 - 1/n) + log2(1 / (n q)) IQR;
  continuous at q = 1/n), past the highest owner score and on, so as q falls to 0 the threshold leaves every
  query behind and the cost falls continuously to 0.
  Version 1 stopped at the highest owner score: on underwater two of the eight test photographs score above
  every owner crop, so the smallest strength already cost test users 3.9-6.2 dB (teacher seeds 0-1), and
  no matched cost below that could be read.
- The gate: a = sigmoid((s(x) - tau) / w) (the paper's sigmoid, with s a distance, so the sign is turned),
  w = ``width`` times the interquartile range of the owner scores (the paper's nu = 1 / w, made unitless by
  the owner's own spread). A smooth gate, not a hard one, so that answers, and the calibrated cost, change
  continuously with the input and with q, and rounding-level differences between batched and single
  forwards stay rounding-level in the answer.
- The misinformation answer f_mis (``misinformation``): ``reverse`` (default): the teacher's correction
  turned round, f_mis(x) = 2 b(x) - f(x), with b(x) the degraded input at output size (the task's
  ``baseline``: the input itself, bicubic upsampling for SR). It is the restoration counterpart of the
  paper's misinformation model (trained to be confidently wrong): a plausible image, coherent from query to
  query, that moves the other way from the clean image (rain added where the teacher removes it), so a
  student fitted to it learns to undo its own restoration; the blend at a = 1/2 is the input itself. It
  needs no training and is deterministic. Random noise was not chosen: a student averages independent noise
  away (``output_noise`` measures that). ``input``: f_mis(x) = b(x), no restoration at all (the milder
  reading: flagged queries are simply not served).
- The served answer y = (1 - a) f(x) + a f_mis(x) = f(x) + a (f_mis(x) - f(x)), per image; the service then
  clamps and rounds it as any answer (``profile.answer_bits``).
- Deterministic per input (DESIGN section 2): nothing is random (no ``query.generator`` is needed); every
  quantity is per image (pooling, score, gate), so an image alone and inside a batch get the same answer (up
  to the batched convolution's rounding, which the smooth gate does not amplify).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from bench import BenchError
from bench.api import Defense, FitContext
from bench.data import Splits, stable_seed
from bench.models import middle_layers
from bench.params import param
from bench.profiles import DATA_FIELDS, subset
from bench.serving import Query, resolve_module

FIT_FIELDS = DATA_FIELDS + ("crop",)


@dataclass(frozen=True)
class Params:
    flag_rate: float = param(0.05, "share of the owner's own crops at or above the OOD threshold (tau = their "
                                   "1 - flag_rate score quantile; 0: off; above 1 tau keeps falling); the strength")
    width: float = param(0.25, "width of the sigmoid gate, in interquartile ranges of the owner's OOD scores")
    misinformation: Literal["reverse", "input"] = param(
        "reverse", "misinformation answer: reverse (2 * input - teacher: the correction turned round) or input "
                   "(the degraded input, no restoration)")
    fit_crops: int = param(64, "owner crops the in-distribution feature statistics are fit on")

    def __post_init__(self) -> None:
        if not 0.0 <= self.flag_rate < float("inf"):
            raise ValueError(f"flag_rate must be finite and >= 0, got {self.flag_rate}")
        if not 0.0 < self.width < float("inf"):
            raise ValueError(f"width must be finite and > 0, got {self.width}")
        if self.fit_crops < 4:
            raise ValueError(f"fit_crops must be >= 4 (quantiles need a few scores), got {self.fit_crops}")


def _pooled_features(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    """(N, D): per image, each layer's per-channel spatial mean and standard deviation, concatenated."""
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[name] = output.detach()
        return keep

    handles = [resolve_module(model, n).register_forward_hook(hook(n)) for n in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    parts = []
    for name in layers:
        f = captured[name].float().flatten(2)  # (N, C, HW)
        parts += [f.mean(2), f.std(2, correction=0)]
    return torch.cat(parts, dim=1)


class OwnerStats(nn.Module):
    """What ``fit`` keeps (as buffers, so it is cached like a model): the owner's feature mean and spread,
    and the owner crops' own OOD scores, sorted."""

    def __init__(self, dim: int, count: int) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))
        self.register_buffer("scores", torch.zeros(count))

    def score(self, v: torch.Tensor) -> torch.Tensor:
        """OOD score per row of ``v`` (N, D): the RMS of its z-scores against the owner's statistics."""
        z = (v - self.mu.to(v)) / self.sd.to(v)
        return z.square().mean(1).sqrt()

    def threshold(self, flag_rate: float) -> tuple[float, float]:
        """(tau, interquartile range) of the owner scores for a flag rate."""
        s = self.scores.double()
        iqr = float(torch.quantile(s, 0.75) - torch.quantile(s, 0.25))
        iqr = max(iqr, 1e-6 * max(float(s.abs().max()), 1e-6))
        n = len(s)
        if flag_rate < 1.0 / n:  # below one owner score in n: on from the 1 - 1/n quantile, one IQR per halving
            return float(torch.quantile(s, 1.0 - 1.0 / n)) + math.log2(1.0 / (n * flag_rate)) * iqr, iqr
        if flag_rate <= 1.0:
            return float(torch.quantile(s, 1.0 - flag_rate)), iqr
        return float(s.min()) - (flag_rate - 1.0) * iqr, iqr


def fit_stats(teacher: nn.Module, layers: Sequence[str], splits: Splits, crops: int, min_side: int,
              seed: int) -> OwnerStats:
    """The owner's statistics from ``crops`` crops of the owner pool's degraded images (side uniform
    between ``min_side`` input pixels and the image's short side)."""
    owner = splits.owner
    if len(owner) == 0:
        raise BenchError("defense 'adaptive_misinformation' needs owner images to fit its in-distribution "
                         "statistics.")
    g = torch.Generator().manual_seed(seed)
    feats, images = [], []
    for _ in range(crops):
        index = int(torch.randint(len(owner), (1,), generator=g))
        images.append(index)
        x = owner.degraded[index]
        h, w = x.shape[-2:]
        lo = min(max(1, min_side), h, w)
        side = int(torch.randint(lo, min(h, w) + 1, (1,), generator=g))
        top = int(torch.randint(h - side + 1, (1,), generator=g))
        left = int(torch.randint(w - side + 1, (1,), generator=g))
        feats.append(_pooled_features(teacher, layers, x[None, :, top:top + side, left:left + side]))
    v = torch.cat(feats)
    stats = OwnerStats(v.shape[1], crops).to(v.device)
    _set_moments(stats, v)
    image_of = torch.tensor(images, device=v.device)
    if len(set(images)) < 2:  # one owner image: no held-out image to score, so the fitted crops' own scores
        with torch.no_grad():
            stats.scores.copy_(torch.sort(stats.score(v)).values)
        return stats
    # the threshold's scores: each owner image's crops against the statistics of the *other* images (leave one
    # image out), i.e. what an unseen in-distribution image scores; the crops' own scores against moments fit on
    # them are optimistically low, and every unseen image, the test users' included, would look out of
    # distribution (measured on underwater, quick: flag_rate 0.02 cost test users 5.5 dB, the attacker 0.9 dB)
    held_out = torch.empty(crops, device=v.device)
    fold = OwnerStats(v.shape[1], crops).to(v.device)
    for index in sorted(set(images)):
        mine = image_of == index
        _set_moments(fold, v[~mine])
        held_out[mine] = fold.score(v[mine])
    with torch.no_grad():
        stats.scores.copy_(torch.sort(held_out).values)
    return stats


def _set_moments(stats: OwnerStats, v: torch.Tensor) -> None:
    """``stats``' mean and per-dimension spread from the rows of ``v`` (sd floored at 1e-3 of its mean)."""
    mu, sd = v.mean(0), v.std(0, correction=0)
    with torch.no_grad():
        stats.mu.copy_(mu)
        stats.sd.copy_(sd.clamp_min(1e-3 * float(sd.mean()) + 1e-12))


class AdaptiveMisinformation(Defense):
    """Adaptive misinformation (Kariyappa & Qureshi, CVPR 2020) on restored images: a blend towards the
    teacher's correction turned round, gated by an OOD score of the teacher's middle features."""

    Params: ClassVar[type] = Params
    strength: ClassVar[str | None] = "flag_rate"
    strength_range: ClassVar[tuple[float, float] | None] = (0.0, 0.05)
    strength_spread: ClassVar[tuple[float, ...] | None] = (0.003, 0.01, 0.03, 0.1)
    saturation_hint: ClassVar[str] = "raise width, or use misinformation=reverse"
    # 2: the threshold from held-out owner images' scores (leave one image out), and past the highest of them
    # for flag rates below one in n
    version: ClassVar[str] = "2"

    def __init__(self, params: Any, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        self.stats: OwnerStats | None = None
        self.teacher: nn.Module | None = None
        self.layers: list[str] = []
        self.baseline: Callable[[torch.Tensor], torch.Tensor] | None = None

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def fit(self, teacher: nn.Module, splits: Splits, ctx: FitContext) -> None:
        layers = middle_layers(teacher)
        if not layers:
            raise BenchError("defense 'adaptive_misinformation' scores queries by the teacher's middle features: "
                             "the model needs body blocks (body.0, ...) or a feature_layers attribute naming "
                             "its feature blocks.")
        p, crops = ctx.profile, self.params.fit_crops
        min_side = max(1, p.crop // max(1, ctx.task.scale))
        config = {"kind": "adaptive_misinformation_stats", "version": self.version, "crops": crops,
                  "layers": layers, "profile": subset(p, FIT_FIELDS)}
        seed = stable_seed("adaptive-misinformation-fit", crops)
        probe = splits.owner.degraded[0][None, :, :8, :8] if len(splits.owner) else None
        if probe is None:
            raise BenchError("defense 'adaptive_misinformation' needs owner images to fit its in-distribution "
                             "statistics.")

        def build() -> nn.Module:
            return OwnerStats(_pooled_features(teacher, layers, probe).shape[1], crops)

        def train_fn(stats: nn.Module) -> dict[str, Any]:
            fitted = fit_stats(teacher, layers, splits, crops, min_side, seed)
            stats.load_state_dict(fitted.state_dict())
            return {"median_score": float(fitted.scores.median())}

        self.stats = ctx.cached_model(config, build, train_fn).eval()
        self.teacher, self.layers, self.baseline = teacher, layers, ctx.task.baseline

    def ood_score(self, x: torch.Tensor) -> torch.Tensor:
        """The OOD score s(x) of each query image (higher: further from the owner's images)."""
        if self.stats is None or self.teacher is None:
            raise BenchError("defense 'adaptive_misinformation' was served before fit() learnt the owner's "
                             "statistics.")
        return self.stats.score(_pooled_features(self.teacher, self.layers, x))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The blend weight a(x) in [0, 1] per query image (0 everywhere when the defense is off)."""
        if self.params.flag_rate == 0:
            return torch.zeros(len(x), device=x.device)
        s = self.ood_score(x)
        tau, iqr = self.stats.threshold(self.params.flag_rate)
        return torch.sigmoid((s - tau) / (self.params.width * iqr))

    def misinformation(self, x: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        b = self.baseline(x) if self.baseline is not None else x
        return 2 * b - answers if self.params.misinformation == "reverse" else b

    def perturb_answers(self, answers: torch.Tensor, query: Query) -> torch.Tensor:
        if self.params.flag_rate == 0:
            return answers
        x = query.inputs
        a = self.gate(x).to(answers.dtype).view(-1, 1, 1, 1)
        return answers + a * (self.misinformation(x, answers).to(answers.dtype) - answers)
