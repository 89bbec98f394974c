"""Nasty teacher: a changed teacher that stays accurate but is hard to distil from.

Paper: Haoyu Ma, Tianlong Chen, Ting-Kuei Hu, Chenyu You, Xiaohui Xie, Zhangyang Wang, "Undistillable:
Making A Nasty Teacher That CANNOT teach students", ICLR 2021. For a classifier, the nasty teacher is
trained to keep its accuracy (cross-entropy on the labels) while *maximising* the KL divergence
between its temperature-softened outputs and those of a normal pretrained network (weight omega), so
that its soft labels mislead a student distilled from them while its argmax stays right.

Adapted to restoration (DESIGN section 6); what the paper leaves open or the setting forces:

- Training-time defense: a copy of the teacher is fine-tuned (DESIGN section 6; far cheaper than
  training a nasty network in full, and it starts at the teacher's accuracy) and then served in its
  place; it is cached like a teacher (``FitContext.cached_model``, keyed by the teacher and every
  parameter of this defense). It is the owner's asset, so its training does not depend on the cell
  seed: one nasty teacher per (teacher, profile, parameters). It changes the answers and the features
  every user and attacker sees: ``channels() = (answers, features)``.
- Accuracy term: L1 to the clean targets on ``owner`` crops (the teacher's own training loss and data),
  the analogue of the paper's cross-entropy on labels.
- Divergence terms (the analogue of the KL to the normal teacher), *bounded* so that maximising them
  cannot run away (in the paper the cross-entropy term holds the softened outputs in check; a distance
  between images that is rewarded without limit would simply grow):
  - output: the high-frequency content of the answers, hp(z) = z - G_s * z (Gaussian blur, sigma
    ``blur_sigma``, reflect padding); D_out = mean over pixels of tanh(|hp(n(x)) - hp(t(x))| / ``hf_scale``),
    which lies in [0, 1): a pixel's high-frequency deviation stops paying once it is well above
    ``hf_scale``. The deviation is sought in the detail (DESIGN section 6), away from the low-frequency
    content that the accuracy term protects.
  - features: at the ``layers`` (``body``: every body block, the default, so that whichever block a
    feature-level attacker is given has diverged; ``middle``: the middle block(s); or module names),
    D_feat = mean over layers and entries of tanh(|F_n - F_t| / (``feature_scale`` * rms(F_t))), the rms
    per image and layer, so the term is scale-free and in [0, 1).
  - loss = L1(n(x), y) - ``omega`` * (D_out + ``feature_weight`` * D_feat). ``omega`` is the strength
    ``bench calibrate`` tunes (omega = 0 is plain fine-tuning, which stays near the teacher's accuracy).
    tanh(|.|) has a non-zero gradient as soon as the copy moves off the teacher, so the copy need not be
    perturbed at the start.
- Training: ``steps`` Adam steps (0: the profile's ``teacher_steps`` // 8, at least 20) at learning
  rate ``lr`` (0: the profile's ``teacher_lr`` / 4), the suite's one training loop (cosine decay,
  clipping), owner crops with flips/rotations, a fixed data seed. The teacher's features are captured
  by forward hooks during training only; serving goes through the shared
  :class:`bench.serving.ServedModel`, which exposes the nasty teacher's features like any other model's.
- The teacher-cost budget on the owner data (``owner_budget_db`` > 0; the paper keeps the nasty
  teacher's accuracy only through its loss): when the fine-tuned copy's mean PSNR on the ``owner`` images
  is more than that below the teacher's, its weights are pulled back along the straight line towards the
  teacher's, to the furthest point (bisection, 10 halvings) whose owner PSNR loss is within the budget.
  The copy is fine-tuned from the teacher, so the line is short; the owner PSNR along it is measured at
  every halving, not assumed. Off by default:
  in dB, a given deviation costs more on the owner images (where the teacher is best) than on ``calib``,
  so a budget there can cap what calibration on ``calib`` is able to reach.
- Its cost to honest users is measured, not bounded: calibration finds the omega at which the served
  nasty teacher loses the budgeted dB on ``calib``; each omega tried is one cached training run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError
from bench.api import Defense, FitContext, Task
from bench.data import Pool, Splits, stable_seed
from bench.filters import gaussian_blur
from bench.metrics import psnr
from bench.models import body_layers, middle_layers
from bench.params import as_dict, param
from bench.profiles import TEACHER_FIELDS, subset
from bench.serving import resolve_module
from bench.train import train


@dataclass(frozen=True)
class Params:
    omega: float = param(0.02, "weight of the (bounded) divergence terms against accuracy; the strength")
    layers: tuple[str, ...] = param(("body",), "feature layers that should diverge: 'body' = every body "
                                               "block, 'middle' = the middle block(s), or module names")
    feature_weight: float = param(1.0, "weight of the feature divergence beside the output divergence")
    hf_scale: float = param(0.02, "output high-frequency deviation (image units) at which its reward saturates")
    feature_scale: float = param(0.5, "feature deviation, relative to the teacher's feature rms, at which "
                                      "its reward saturates")
    blur_sigma: float = param(1.0, "Gaussian sigma (px) of the low-pass whose residual is the high frequency")
    steps: int = param(0, "fine-tuning steps (0: the profile's teacher_steps // 8, at least 20)")
    lr: float = param(0.0, "fine-tuning learning rate (0: the profile's teacher_lr / 4)")
    owner_budget_db: float = param(0.0, "teacher-cost budget on the owner data (dB PSNR); a copy that loses "
                                        "more is pulled back towards the teacher until it fits (0: none)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.omega < float("inf"):
            raise ValueError(f"omega must be finite and >= 0, got {self.omega}")
        if any(not name for name in self.layers):
            raise ValueError("layers must not contain empty names")
        for name in ("feature_weight",):
            if not 0.0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be finite and >= 0")
        for name in ("hf_scale", "feature_scale", "blur_sigma"):
            if not 0.0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        if self.steps < 0 or self.lr < 0:
            raise ValueError("steps and lr must be >= 0")
        if not 0.0 <= self.owner_budget_db < float("inf"):
            raise ValueError(f"owner_budget_db must be finite and >= 0, got {self.owner_budget_db}")


def high_pass(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """z minus its Gaussian blur (per channel, reflect padding, radius ceil(3 sigma))."""
    return z - gaussian_blur(z, sigma)


def bounded_divergence(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """mean(tanh(|a - b| / scale)), in [0, 1)."""
    return torch.tanh((a - b).abs() / scale).mean()


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name in ("body", "middle"):
            found = body_layers(model) if name == "body" else middle_layers(model)
            if not found:
                raise BenchError(f"defense 'nasty_teacher': layers={name} needs a model with body blocks "
                                 "(body.0, body.1, ...); name the layers explicitly instead.")
            out.extend(found)
        else:
            resolve_module(model, name)  # a clear error for unknown names
            out.append(name)
    return list(dict.fromkeys(out))


@torch.no_grad()
def mean_psnr(model: nn.Module, pool: Pool, task: Task) -> float:
    """Mean PSNR of ``model`` over the pool's images, in the task's metric convention."""
    scores = [psnr(model(x[None]).clamp(0, 1), y[None], y_channel=task.y_channel, shave=task.shave)
              for x, y in zip(pool.degraded, pool.clean)]
    return sum(scores) / len(scores)


@torch.no_grad()
def pull_back(model: nn.Module, teacher: nn.Module, pool: Pool, task: Task, budget_db: float,
              halvings: int = 10) -> tuple[float, float]:
    """Move ``model``'s weights towards ``teacher``'s until its PSNR loss on ``pool`` is within ``budget_db``:
    theta = theta_t + alpha (theta_n - theta_t), the largest alpha in [0, 1] found by bisection.
    Returns (alpha, PSNR loss at alpha)."""
    reference = mean_psnr(teacher, pool, task)
    drop = reference - mean_psnr(model, pool, task)
    if drop <= budget_db:
        return 1.0, drop
    nasty = {k: v.clone() for k, v in model.state_dict().items()}
    base = teacher.state_dict()

    def place(alpha: float) -> float:
        model.load_state_dict({k: base[k] + alpha * (v - base[k]) if v.is_floating_point() else v
                               for k, v in nasty.items()})
        return reference - mean_psnr(model, pool, task)

    lo, lo_drop, hi = 0.0, 0.0, 1.0  # the teacher itself (alpha = 0) costs nothing
    for _ in range(halvings):
        mid = 0.5 * (lo + hi)
        d = place(mid)
        if d <= budget_db:
            lo, lo_drop = mid, d
        else:
            hi = mid
    place(lo)
    return lo, lo_drop


class _Capture:
    """Forward hooks that keep the outputs of named modules (with their graph) for one forward."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self._handles = [resolve_module(model, n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.out[name] = output

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def nasty_loss(p: Params, nasty: nn.Module, teacher: nn.Module, cap_n: _Capture, cap_t: _Capture,
               layers: Sequence[str], batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    with torch.no_grad():
        t_out = teacher(x)
        t_hp = high_pass(t_out, p.blur_sigma)
        t_feats = {n: cap_t.out[n] for n in layers}
    n_out = nasty(x)
    loss = F.l1_loss(n_out, y)
    if p.omega == 0:
        return loss
    div = bounded_divergence(high_pass(n_out, p.blur_sigma), t_hp, p.hf_scale)
    if layers and p.feature_weight:
        feat = 0.0
        for n in layers:
            ft = t_feats[n]
            rms = ft.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)
            feat = feat + bounded_divergence(cap_n.out[n], ft, p.feature_scale * rms)
        div = div + p.feature_weight * feat / len(layers)
    return loss - p.omega * div


class NastyTeacher(Defense):
    """Nasty teacher (Ma et al., ICLR 2021): a fine-tuned teacher, accurate but hard to distil from.

    Its features and high frequencies diverge from the normal teacher's; accuracy on ``owner`` is kept."""

    Params: ClassVar[type] = Params
    strength: ClassVar[str | None] = "omega"
    strength_range: ClassVar[tuple[float, float] | None] = (0.0, 0.02)
    strength_spread: ClassVar[tuple[float, ...] | None] = (0.0, 0.01, 0.03, 0.1)
    strength_identity: ClassVar[bool] = False  # omega = 0 still fine-tunes a copy of the teacher
    version: ClassVar[str] = "1"

    def __init__(self, params: Any, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        self.model: nn.Module | None = None

    def channels(self) -> tuple[str, ...]:
        return ("answers", "features")

    def fit(self, teacher: nn.Module, splits: Splits, ctx: FitContext) -> None:
        p, prof = self.params, ctx.profile
        steps = p.steps or max(20, prof.teacher_steps // 8)
        lr = p.lr or prof.teacher_lr / 4
        config = {"kind": "nasty_teacher", "version": self.version, "params": as_dict(p), "steps": steps,
                  "lr": lr, "profile": subset(prof, TEACHER_FIELDS)}
        layers = resolve_layers(teacher, p.layers)
        seed = stable_seed("nasty-teacher-data")

        def build() -> nn.Module:
            return copy.deepcopy(teacher)

        def train_fn(model: nn.Module) -> dict[str, Any]:
            # channels-last like the copy in training (bench.train): its forward pass is a third of a step
            frozen = copy.deepcopy(teacher).eval().requires_grad_(False).to(memory_format=torch.channels_last)
            model.requires_grad_(True)
            cap_n, cap_t = _Capture(model, layers), _Capture(frozen, layers)
            owner = splits.owner
            try:
                with torch.enable_grad():  # fit may be called under no_grad (e.g. while serving)
                    losses = train(model, lambda g: owner.sample_crops(prof.batch, prof.crop, g), steps=steps,
                                   lr=lr, seed=seed, desc=f"training nasty teacher (omega={p.omega:g})",
                                   progress=ctx.progress,
                                   loss_fn=lambda m, b: nasty_loss(p, m, frozen, cap_n, cap_t, layers, b))
            finally:
                cap_n.close()
                cap_t.close()
            info: dict[str, Any] = {"final_loss": losses[-1] if losses else None}
            if p.owner_budget_db > 0:
                alpha, drop = pull_back(model.eval(), frozen, owner, ctx.task, p.owner_budget_db)
                info.update(pull_back_alpha=alpha, owner_drop_db=drop)
            return info

        self.model = ctx.cached_model(config, build, train_fn).eval()

    def served_teacher(self, teacher: nn.Module) -> nn.Module:
        if self.model is None:
            raise BenchError("defense 'nasty_teacher' was served before fit() trained the nasty teacher.")
        return self.model
