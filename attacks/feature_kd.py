"""Feature knowledge distillation, FitNets-style: the student also matches the served model's features.

Paper: Adriana Romero, Nicolas Ballas, Samira Ebrahimi Kahou, Antoine Chassang, Carlo Gatta, Yoshua
Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015. There a thin student's intermediate layer (the
"guided" layer) is trained, through a learned regressor, to predict a teacher's intermediate layer (the
"hint"): loss 1/2 ||hint - r(guided)||^2. Here the teacher is a served model whose features at named
layers are exposed (access level ``features``), so the hints are whatever the defense lets through.

What the paper leaves open for this setting, and what this module chooses:

- Layers. ``layers`` (the served model's; default ``middle``: the teacher's middle body block(s),
  :func:`bench.models.middle_layers`, which is also where ASVP perturbs by default; for a user's model,
  the middle of the blocks it declares in ``feature_layers``) are asked to be exposed by
  :meth:`FeatureKD.feature_layers`. ``student_layers`` default ``auto``: for each teacher block i of n
  (:func:`bench.models.body_layers`), the student block at the same relative depth,
  round((i + 1) / n * m) - 1 of m blocks (rounding half up); two teacher layers may guide the same
  student layer. Explicit names are given one per teacher layer. A hint must have the query's spatial
  size or a whole multiple of it (so it can be cropped in step); downsampled features (a U-Net's inner
  levels) are refused with an error.
- Regressor. A trainable 1x1 convolution per (student, teacher) layer pair maps the student's channels
  to the teacher's (the reference architectures keep the input's spatial size in their body; should a
  student feature map differ in size from its hint, the regressor's output is resized bilinearly). A
  transformer student's token sequences are seen as maps, and a padded student's maps are cut to the part
  that answers its crop, as the served model's hints are (:mod:`bench.features`).
- Training. One stage, not the paper's two (hint pre-training, then KD): loss = L1(student output,
  answer) + sum_l w_l * MSE(regressor_l(student feature_l), hint_l) with ``feature_weights`` w (one for
  all layers, or one per layer). The hints are fixed targets collected when querying (no gradient ever
  reaches the served model); the student and the regressors are trained together by the one training
  loop, on crops of the queries cut in step from answers and hints (:func:`bench.data.sample_pair_crops`).
- Defaults chosen so that the attack does its best undefended (an attack's defaults are its strongest):
  ``feature_weights=0.1`` and ``augment=true`` (the task's flips/rotations, applied to crops, answers and
  hints alike, although a CNN's feature maps are not equivariant channel by channel). Measured on derain
  (quick profile, teacher seed 0, student seeds 0-2, ``grids/feature-kd-tuning.yaml``), the undefended
  student against vanilla KD's, paired: weight 1 without augmentation (the earlier default) -0.48 dB
  (-0.93, -0.19, -0.32); weight 1 with it -0.95; weight 0.1 without -0.09, with it -0.03 (-0.12, +0.20,
  -0.16: not separable from vanilla KD); weight 0 without -0.37, with it 0.00 (then this attack trains
  exactly the student :mod:`attacks.vanilla_kd` trains). Hints did not help a student beyond vanilla KD
  at any weight tried; larger weights only cost it.
- Hints are kept in memory as float32: (budget x channels x query pixels) per layer; at the ``paper``
  profile that is many GB, so lower ``queries`` there if memory is short.
- Ground-truth mode (the ``gt_student`` reference) has no hints: the feature terms are dropped and the
  student trains on clean images with the same crops, steps and augmentation.

The adaptive countermeasures of :mod:`bench.adaptive` apply to the answers (``tta_average`` averages the
answers; the hints are those of the untransformed query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError
from bench.adaptive import AdaptiveParams
from bench.api import Attack, AttackContext
from bench.data import Pool
from bench.features import InputSizes, as_map, crop_exposed
from bench.kd import collect, distill
from bench.models import body_layers, middle_layers
from bench.params import param
from bench.query import QueryAPI
from bench.serving import resolve_module


@dataclass(frozen=True)
class FeatureKDParams(AdaptiveParams):
    queries: int = param(0, "query budget, in images sent to the served model (0: the profile's query_budget)")
    steps: int = param(0, "student training steps (0: the profile's student_steps)")
    lr: float = param(0.0, "student learning rate (0: the profile's student_lr)")
    layers: tuple[str, ...] = param(("middle",), "served-model layers whose exposed features are the "
                                                         "hints; 'middle' = the teacher's middle body block(s)")
    student_layers: tuple[str, ...] = param(("auto",), "student layers guided by the hints, one per teacher "
                                                       "layer; 'auto' = body blocks at the same relative depth")
    feature_weights: tuple[float, ...] = param((0.1,), "weight of each hint's MSE term (one for all layers, "
                                                       "or one per teacher layer)")
    augment: bool = param(True, "random flips/rotations of the training crops, answers and hints (the task's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 0 or self.steps < 0 or self.lr < 0:
            raise ValueError("queries, steps and lr must be >= 0")
        if not self.layers or any(not n for n in self.layers):
            raise ValueError("layers must name at least one layer of the served model (or 'middle')")
        if not self.student_layers or any(not n for n in self.student_layers):
            raise ValueError("student_layers must name at least one layer (or 'auto')")
        if "auto" in self.student_layers and len(self.student_layers) > 1:
            raise ValueError("student_layers is either 'auto' or one student layer per teacher layer")
        if not self.feature_weights or any(w < 0 for w in self.feature_weights):
            raise ValueError("feature_weights must be >= 0 (one value, or one per teacher layer)")


class FeatureKD(Attack):
    """FitNets-style feature distillation (Romero et al., ICLR 2015) from the served model's exposed features."""

    Params: ClassVar[type] = FeatureKDParams
    access: ClassVar[str] = "features"

    def __init__(self, params: FeatureKDParams, *, seed: int = 0) -> None:
        super().__init__(params, seed=seed)
        self._depth: dict[str, float] = {}  # relative depth of each requested teacher layer

    def feature_layers(self, teacher: nn.Module) -> list[str]:
        names: list[str] = []
        for name in self.params.layers:
            if name == "middle":
                middle = middle_layers(teacher)
                if not middle:
                    raise BenchError("attack 'feature_kd': layers=middle needs a teacher with body blocks "
                                     "(body.0, body.1, ...) or a feature_layers attribute; name the layers "
                                     "with --set attack.layers=NAME,NAME.")
                names.extend(middle)
            else:
                resolve_module(teacher, name)
                names.append(name)
        names = list(dict.fromkeys(names))
        body = body_layers(teacher)
        self._depth = {n: (body.index(n) + 1) / len(body) for n in names if n in body}
        return names

    def _student_layers(self, teacher_layers: list[str], student: nn.Module) -> list[str]:
        p = self.params
        if p.student_layers != ("auto",):
            if len(p.student_layers) != len(teacher_layers):
                raise BenchError(f"attack 'feature_kd': {len(p.student_layers)} student_layers for "
                                 f"{len(teacher_layers)} teacher layers ({', '.join(teacher_layers)}); give one each.")
            for name in p.student_layers:
                resolve_module(student, name)
            return list(p.student_layers)
        body = body_layers(student)
        missing = [n for n in teacher_layers if n not in self._depth]
        if missing or not body:
            raise BenchError(f"attack 'feature_kd': student_layers=auto matches main blocks only (body.N or a "
                             f"model's feature_layers); name the student layers for "
                             f"{', '.join(missing or teacher_layers)} with --set attack.student_layers=NAME,NAME.")
        m = len(body)
        return [body[min(m - 1, max(0, int(self._depth[n] * m + 0.5) - 1))] for n in teacher_layers]

    def _weights(self, n: int) -> list[float]:
        w = self.params.feature_weights
        if len(w) == 1:
            return [float(w[0])] * n
        if len(w) != n:
            raise BenchError(f"attack 'feature_kd': {len(w)} feature_weights for {n} teacher layers; "
                             "give one for all or one per layer.")
        return [float(v) for v in w]

    def steal(self, api: QueryAPI, pool: Pool, student: nn.Module, ctx: AttackContext) -> nn.Module:
        p = self.params
        steps, lr = p.steps or ctx.profile.student_steps, p.lr or ctx.profile.student_lr
        inputs, answers, hints = collect(api, pool, ctx, features=not ctx.ground_truth)
        if not hints:  # ground-truth mode: no hints, the same training otherwise
            distill(student, inputs, answers, ctx, steps=steps, lr=lr, augment=p.augment)
            return student
        teacher_layers = [n for n in api.exposed_layers if n in hints]
        for name in teacher_layers:
            (h, w), (fh, fw) = inputs.shape[-2:], hints[name].shape[-2:]
            if fh < h or fh % h or fw != fh // h * w:
                raise BenchError(f"attack 'feature_kd': the features at '{name}' are {fw}x{fh} px for {w}x{h} px "
                                 "queries; hints must have the query's size or a whole multiple of it (not a "
                                 "U-Net's inner levels): choose others with --set attack.layers=NAME,NAME.")
        student_layers = self._student_layers(teacher_layers, student)
        weights = self._weights(len(teacher_layers))

        captured: dict[str, torch.Tensor] = {}
        sizes = InputSizes(student)  # token features' spatial shape; the part of a padded map the crop answers

        def hook(name: str):
            def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                fmap, _ = as_map(output, args, sizes.padded, layer=name)
                captured[name] = crop_exposed(fmap, sizes.called, sizes.padded)
            return fn

        handles = [resolve_module(student, n).register_forward_hook(hook(n)) for n in dict.fromkeys(student_layers)]
        handles.extend(sizes.handles)
        try:
            with torch.no_grad():  # the student's channel counts, from one query
                student(inputs[:1])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                adapters = nn.ModuleList(nn.Conv2d(captured[s].shape[1], hints[t].shape[1], 1)
                                         for s, t in zip(student_layers, teacher_layers))

            def loss_fn(model: nn.Module, batch) -> torch.Tensor:
                x, y, targets = batch
                captured.clear()
                loss = F.l1_loss(model(x), y)
                for adapter, s, t, w in zip(adapters, student_layers, teacher_layers, weights):
                    guess = adapter(captured[s])
                    target = targets[t]
                    if guess.shape[-2:] != target.shape[-2:]:
                        guess = F.interpolate(guess, size=target.shape[-2:], mode="bilinear", align_corners=False)
                    loss = loss + w * F.mse_loss(guess, target)
                return loss

            distill(student, inputs, answers, ctx, steps=steps, lr=lr, loss_fn=loss_fn, augment=p.augment,
                    extra_targets={t: hints[t] for t in teacher_layers},
                    params=list(student.parameters()) + list(adapters.parameters()),
                    desc="training student (feature KD)")
        finally:
            for h in handles:
                h.remove()
        return student
