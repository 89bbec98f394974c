"""MAD: prediction poisoning by maximising the angular deviation of the attacker's gradient.

Paper: Tribhuvanesh Orekondy, Bernt Schiele, Mario Fritz, "Prediction Poisoning: Towards Defenses
Against DNN Model Stealing Attacks", ICLR 2020. For a classifier, MAD answers a perturbed posterior
y~ instead of y, chosen within a distance budget of y so that the gradient the attacker's model would
take on (x, y~) points as far as possible from the gradient it would take on (x, y): it maximises the
angular deviation between G^T y~ and G^T y, where G is the Jacobian of a *surrogate* attacker model's
log-likelihood with respect to its last layer's parameters.

Adapted to restoration (DESIGN section 6), with what the paper leaves open or what the change of
setting forces:

- Answer and budget: y is the teacher's restored image (clamped to [0, 1], as the service returns it),
  the answer is y + d with ||d||_2 <= ``eps`` ||y||_2 per image (Frobenius norms over the image; the
  paper bounds a distance between posteriors instead). y + d is also kept in [0, 1] (the image analogue
  of the paper's simplex constraint), by projecting onto the ball and then onto the box, which keeps
  the ball constraint. ``eps`` is the strength ``bench calibrate`` tunes.
- The attacker's loss whose gradient is deviated: squared error 1/2 ||s(x) - y~||^2 of the surrogate s.
  Its gradient with respect to the last layer's parameters is affine in the target y~ (as the
  cross-entropy's is in the original), so the deviation can be optimised by gradient steps. (The L1 loss
  of this suite's KD attack has a gradient that is piecewise constant in the target, which has no
  useful derivative.)
- "Last layer": the surrogate's last ``nn.Conv2d`` (``tail`` of the reference architecture), weight and
  bias. Its per-image parameter gradient is computed exactly: the residual s(x) - y~ is carried back to
  the layer's output by autograd (through what follows it: sub-pixel shuffle and skip connection), then
  correlated with the layer's unfolded input (a batched matrix product, one gradient per image).
- The maximisation: ``steps`` projected gradient-ascent steps on 1 - cos(g(y), g(y + d)), from a random
  start on the sphere of radius eps ||y|| (the deviation has zero gradient at d = 0), each a normalised
  step of ``step_size`` times the radius followed by the projection; the last iterate is answered (for
  posteriors the paper evaluates the objective at the vertices of the probability simplex and moves y
  towards the best one; an image has no such finite candidate set). Keeping the best iterate per image
  instead would make the answer jump between iterates as ``eps`` changes, and the teacher's cost with
  it, which calibration's bracketing cannot land on. The random start comes from
  ``query.generator(i)``, seeded by the image's content and the defense seed, so answers are
  deterministic per input and independent of the rest of the batch (DESIGN section 2).
- The surrogate: the task's student architecture, trained by the owner on ``owner`` crops to imitate the
  undefended teacher (L1, the attacker's recipe), for ``surrogate_steps`` steps (0: the profile's
  ``student_steps``), student learning rate. It is the owner's asset like the teacher: trained once per
  (teacher, profile, surrogate settings), independent of the cell seed and of ``eps``, and cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError
from bench.api import Defense, FitContext
from bench.data import Splits, stable_seed
from bench.params import param
from bench.profiles import DATA_FIELDS, subset
from bench.serving import Query
from bench.train import train

SURROGATE_FIELDS = DATA_FIELDS + ("crop", "batch", "student_channels", "student_blocks", "student_steps",
                                  "student_lr")


@dataclass(frozen=True)
class Params:
    eps: float = param(0.02, "perturbation bound: ||d|| <= eps * ||y|| per answer image; the strength")
    steps: int = param(5, "projected gradient-ascent steps per answer")
    step_size: float = param(0.5, "length of one ascent step, as a fraction of the radius eps * ||y||")
    surrogate_steps: int = param(0, "surrogate training steps (0: the profile's student_steps)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < float("inf"):
            raise ValueError(f"eps must be finite and >= 0, got {self.eps}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not 0.0 < self.step_size < float("inf"):
            raise ValueError(f"step_size must be finite and > 0, got {self.step_size}")
        if self.surrogate_steps < 0:
            raise ValueError(f"surrogate_steps must be >= 0, got {self.surrogate_steps}")


def last_conv(model: nn.Module) -> nn.Conv2d:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise BenchError("defense 'mad' needs a surrogate with a Conv2d layer (its last layer's gradient "
                         "is what MAD deviates).")
    conv = convs[-1]
    if conv.groups != 1:
        raise BenchError("defense 'mad': the surrogate's last Conv2d must have groups=1.")
    return conv


class _LastLayerGradient:
    """Per-image gradient of 1/2 ||s(x) - target||^2 with respect to the surrogate's last Conv2d
    (weight and bias), as a linear function of the residual s(x) - target.

    One surrogate forward per batch; each gradient afterwards is a backward through what follows the
    last layer plus one batched matrix product."""

    def __init__(self, surrogate: nn.Module, x: torch.Tensor) -> None:
        conv = last_conv(surrogate)
        captured: dict[str, torch.Tensor] = {}

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            captured["input"] = args[0].detach()
            leaf = output.detach().requires_grad_(True)
            captured["output"] = leaf
            return leaf

        handle = conv.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                self.out = surrogate(x)
        finally:
            handle.remove()
        self.leaf = captured["output"]
        inp = captured["input"]
        self.cols = F.unfold(inp, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                             stride=conv.stride).transpose(1, 2)  # (N, P, C k k)
        self.bias = conv.bias is not None

    def __call__(self, residual: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """(N, O * K + O) per-image gradients (weight, then bias) for residuals (N, 3, H, W) at the
        model's output."""
        at_layer = torch.autograd.grad(self.out, self.leaf, grad_outputs=residual, retain_graph=True,
                                       create_graph=create_graph)[0].flatten(2)  # (N, O, P)
        weight = (at_layer @ self.cols).flatten(1)
        return torch.cat([weight, at_layer.sum(2)], dim=1) if self.bias else weight


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def gradient_deviation(surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Angle (radians, per image) between the surrogate's last-layer gradients for targets y and y + d."""
    grad = _LastLayerGradient(surrogate, x)
    r0 = grad.out.detach() - y
    with torch.no_grad():
        g0, g1 = grad(r0), grad(r0 - d)
    return torch.arccos(_cos(g0, g1).clamp(-1, 1))


def _project(d: torch.Tensor, y: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Onto {||d|| <= radius} per image, then onto {0 <= y + d <= 1} (stays inside the ball, y in [0, 1])."""
    norm = d.flatten(1).norm(dim=1).clamp_min(1e-30)
    d = d * (radius / norm).clamp(max=1.0).view(-1, 1, 1, 1)
    return (y + d).clamp(0, 1) - y


def poison(surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
           start: Callable[[int], torch.Generator]) -> torch.Tensor:
    """MAD's perturbation d for answers ``y`` (in [0, 1]) to queries ``x``: ||d|| <= eps ||y|| per image,
    y + d in [0, 1], maximising the surrogate's last-layer gradient deviation. ``start(i)`` gives the
    generator for image i's random start."""
    radius = eps * y.flatten(1).norm(dim=1)
    if eps == 0:
        return torch.zeros_like(y)
    d = torch.stack([torch.randn(y[i].shape, generator=start(i), dtype=y.dtype, device=y.device)
                     for i in range(len(y))])
    d = d * (radius / d.flatten(1).norm(dim=1).clamp_min(1e-30)).view(-1, 1, 1, 1)
    d = _project(d, y, radius)
    grad = _LastLayerGradient(surrogate, x)
    r0 = grad.out.detach() - y
    g0 = grad(r0)
    with torch.enable_grad():
        for _ in range(steps):
            d = d.detach().requires_grad_(True)
            dev = 1 - _cos(g0, g0 - grad(d, create_graph=True))
            (ascent,) = torch.autograd.grad(dev.sum(), d)
            ascent = ascent / ascent.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            d = _project(d.detach() + step_size * radius.view(-1, 1, 1, 1) * ascent, y, radius)
    return d.detach()


class MAD(Defense):
    """MAD prediction poisoning (Orekondy et al., ICLR 2020) on restored images, with a surrogate student."""

    Params: ClassVar[type] = Params
    strength: ClassVar[str | None] = "eps"
    strength_range: ClassVar[tuple[float, float] | None] = (0.0, 0.02)
    strength_spread: ClassVar[tuple[float, ...] | None] = (0.01, 0.02, 0.04, 0.08)
    version: ClassVar[str] = "1"

    def __init__(self, params: Any, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        self.surrogate: nn.Module | None = None

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def fit(self, teacher: nn.Module, splits: Splits, ctx: FitContext) -> None:
        p = ctx.profile
        steps = self.params.surrogate_steps or p.student_steps
        config = {"kind": "mad_surrogate", "version": self.version, "steps": steps,
                  "profile": subset(p, SURROGATE_FIELDS)}
        seed = stable_seed("mad-surrogate", steps)

        def build() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return ctx.task.student_arch()

        def train_fn(model: nn.Module) -> dict[str, Any]:
            owner = splits.owner

            def next_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
                x, _ = owner.sample_crops(p.batch, p.crop, g)
                with torch.no_grad():
                    return x, teacher(x).clamp(0, 1)

            with torch.enable_grad():  # fit may be called under no_grad
                losses = train(model, next_batch, steps=steps, lr=p.student_lr, seed=seed,
                               desc="training MAD surrogate", progress=ctx.progress)
            return {"final_loss": losses[-1] if losses else None}

        surrogate = ctx.cached_model(config, build, train_fn)
        self.surrogate = surrogate.eval().requires_grad_(False)

    def perturb_answers(self, answers: torch.Tensor, query: Query) -> torch.Tensor:
        if self.surrogate is None:
            raise BenchError("defense 'mad' was served before fit() trained its surrogate.")
        y = answers.detach().clamp(0, 1)
        d = poison(self.surrogate, query.inputs, y, self.params.eps, self.params.steps, self.params.step_size,
                   lambda i: query.generator(i, y.device))
        return y + d
