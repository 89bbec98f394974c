"""Skeptical student: the served model's answers reach the student through a shallow auxiliary head.

Paper: Souvik Kundu, Qirui Sun, Yao Fu, Massoud Pedram, Peter A. Beerel, "Analyzing the Confidentiality of
Undistillable Teachers in Knowledge Distillation", NeurIPS 2021 (code: github.com/ksouvik52/Skeptical2021).
It was built to steal from the nasty teacher (:mod:`defenses.nasty_teacher`). Its observation: the nasty
teacher's influence on a student falls sharply when its soft labels are distilled into a *shallow* section
of the student (through an auxiliary classifier on an intermediate feature, removed at inference) instead
of at the student's final layer. The skeptical student therefore distils the teacher into an auxiliary
classifier (AC) on a shallow feature only; its final classifier never sees the teacher's outputs and is
trained on the ground-truth labels plus self-distillation with the ACs (data available), or by
"auxiliary self-distillation" from the AC alone (data-free: no labels at all).

What the paper leaves open for restoration, and what this module chooses:

- Which case. The attacker of this suite has no clean images (:func:`bench.kd.pick_queries`), so this is
  the paper's label-free case: the teacher's answers supervise the auxiliary head, and the final output is
  fitted (by default) to a target derived from the answers and the auxiliary head, not to the raw answers.
- How many heads. One, at one layer: the paper attaches an AC after every stage of a ResNet but distils the
  teacher into one of them (``loc`` in its code); the others only take part in self-distillation with
  labels, which this attacker has not.
- Where the head sits (``aux_layer``; default ``auto``): the output of the student's middle main block
  (:func:`bench.models.body_layers`, a model's declared ``feature_layers`` included), the shallower one of
  the two central blocks for an even count (``body.0`` for the two-block quick student, and for the smoke
  profile's single block). A module name picks another layer. The feature is taken by a forward hook, as
  :mod:`attacks.feature_kd` does, so any student architecture works.
- The head (the analogue of the paper's AC: a few convolutions and a classifier on the feature): conv 3x3
  (C -> ``aux_width``, 0: C) -> ReLU -> conv 3x3 (-> 3 r^2) -> pixel shuffle by r -> + the query (bicubically
  resized to the output size when r > 1), i.e. the student's own tail with one extra layer, r = output
  side / feature side (whole numbers only; other feature sizes are refused with an error). Its last conv
  starts at a tenth of its initialisation and zero bias, as the reference models' tails do, so the head
  starts near its skip path. It is initialised from the cell seed (``ctx.seed``) and lives beside the
  student, never in it: the returned student has exactly its own parameters and state-dict keys and no
  hooks left on it.
- The teacher-to-head term (the paper's KD at the AC, weight gamma_1): ``aux_weight`` * L1(head, answer),
  L1 as everywhere in this suite instead of the KL of softened logits. Its gradient trains the head and
  the student's layers up to ``aux_layer``.
- The final output's target (``final_target``; the paper's self-distillation, made to fit images):
  ``hybrid`` (default): G * answer + (head - G * head), the low frequencies of the answer and the high
  frequencies of the head's prediction (detached), G a Gaussian blur of sigma ``blur_sigma`` output
  pixels (:func:`bench.filters.gaussian_blur`, reflected borders). Why: a nasty teacher keeps its answers
  right where its accuracy term holds (for a classifier the argmax, which is why the paper keeps the
  labels' cross-entropy at the final layer; for restoration the low frequencies, and the built-in nasty
  teacher puts its deviation into the high-pass residual of this same blur), so the low-pass of the
  answer is the trustworthy part, the analogue of the labels; the detail the student's final output
  learns comes through the shallow path only, which the paper found carries little of a nasty teacher's
  adversarial structure. Early in training the head is near its skip path, so the target's detail is
  then the query's own. ``aux``: the head's prediction alone (the paper's data-free auxiliary
  self-distillation, taken literally). ``answer``: the raw answer (vanilla KD's target, with the head
  only as an extra term shaping the shallow layers; with ``aux_weight=0`` this trains exactly the student
  :mod:`attacks.vanilla_kd` trains, which the tests check). The target is detached: the final term
  trains the whole student but never the head (in the data-free scheme the AC is the final output's
  teacher, not its student).
- Undefended answers: the head is trained to reproduce the answers, so the hybrid target tends to the
  answer and the attack tends to vanilla KD; what a shallow head cannot reproduce of an honest teacher's
  detail would cost the student. Measured on derain (quick profile, teacher seed 0, student seeds 0-2,
  one thread), the undefended student against vanilla KD's, paired: +0.19, -0.02, +0.23 dB. Against the
  nasty teacher, defended students paired: at its default omega=0.02 (which costs vanilla KD nothing
  there) +0.06, -0.07, -0.09 dB; at omega=0.1 (teacher cost 3.1 dB) +0.22, +0.30, -0.10 dB, student drops
  0.95, 0.90, 1.07 dB against vanilla KD's 0.98, 1.21, 0.75: on three seeds this adaptation does not
  undo the nasty teacher (``final_target=aux``, seed 0 at omega=0.1: drop 0.96 dB).
- Training: one stage, the suite's one loop (:func:`bench.kd.distill`: Adam with cosine decay, clipping,
  random aligned crops with the task's flips/rotations, data order from the cell seed), the student and
  the head together, loss = ``aux_weight`` * L1(head, answer) + L1(final, target). No warm-up (the
  official code delays KD for ``kd_delay`` epochs of cross-entropy on labels, which this attacker lacks).
  The paper's ensemble of ACs and final output (Skeptical-E) is not used: the suite scores the student's
  final output.
- Output-only access: the attack sees answers, never the teacher's internals. Deterministic for a cell
  seed (queries, head initialisation, crops and order all come from it).
- Ground-truth mode (the ``gt_student`` reference): the same recipe, on the clean images of the queries.

The adaptive countermeasures of :mod:`bench.adaptive` (``tta_average``, ``output_filter``) are parameters
and act on the answers before any of the above.
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
from bench.filters import gaussian_blur
from bench.kd import collect, distill
from bench.models import middle_layers
from bench.params import param
from bench.query import QueryAPI
from bench.serving import resolve_module

FINAL_TARGETS = ("hybrid", "aux", "answer")


@dataclass(frozen=True)
class SkepticalStudentParams(AdaptiveParams):
    queries: int = param(0, "query budget, in images sent to the served model (0: the profile's query_budget)")
    steps: int = param(0, "student training steps (0: the profile's student_steps)")
    lr: float = param(0.0, "student learning rate (0: the profile's student_lr)")
    aux_layer: str = param("auto", "student layer feeding the auxiliary head; 'auto' = the middle main block "
                                   "(the shallower of two)")
    aux_width: int = param(0, "hidden channels of the auxiliary head (0: the feature's channels)")
    aux_weight: float = param(1.0, "weight of the auxiliary head's L1 to the answers (teacher -> head term)")
    final_target: str = param("hybrid", "target of the student's final output: hybrid (low-pass of the answer + "
                                        "high-pass of the head's prediction), aux (the head's prediction), "
                                        "answer (the raw answer, vanilla KD's)", choices=FINAL_TARGETS)
    blur_sigma: float = param(1.0, "Gaussian sigma (output px) splitting low from high frequencies "
                                   "(final_target=hybrid)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 0 or self.steps < 0 or self.lr < 0 or self.aux_width < 0:
            raise ValueError("queries, steps, lr and aux_width must be >= 0")
        if not self.aux_layer:
            raise ValueError("aux_layer must name a student layer (or 'auto')")
        if self.final_target not in FINAL_TARGETS:
            raise ValueError(f"final_target must be one of {', '.join(FINAL_TARGETS)}, got {self.final_target!r}")
        if not 0.0 <= self.aux_weight < float("inf"):
            raise ValueError(f"aux_weight must be finite and >= 0, got {self.aux_weight}")
        if self.aux_weight == 0 and self.final_target != "answer":
            raise ValueError(f"final_target={self.final_target} learns from the auxiliary head, which "
                             "aux_weight=0 leaves untrained; give aux_weight > 0 or final_target=answer")
        if not 0.0 < self.blur_sigma < float("inf"):
            raise ValueError(f"blur_sigma must be finite and > 0, got {self.blur_sigma}")


class AuxHead(nn.Module):
    """The auxiliary head: a shallow feature -> a prediction of the answer (see the module doc)."""

    def __init__(self, channels: int, width: int, ratio: int) -> None:
        super().__init__()
        self.ratio = int(ratio)
        self.body = nn.Conv2d(channels, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3 * self.ratio**2, 3, padding=1)
        with torch.no_grad():
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()

    def forward(self, feature: torch.Tensor, query: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.tail(F.relu(self.body(feature)))
        if self.ratio > 1:
            out = F.pixel_shuffle(out, self.ratio)
        skip = query if tuple(query.shape[-2:]) == tuple(size) else \
            F.interpolate(query, size=size, mode="bicubic", align_corners=False)
        return out + skip


def high_pass(z: torch.Tensor, sigma: float) -> torch.Tensor:
    return z - gaussian_blur(z, sigma)


class SkepticalStudent(Attack):
    """Skeptical student (Kundu et al., NeurIPS 2021): answers distilled through a shallow auxiliary head."""

    Params: ClassVar[type] = SkepticalStudentParams
    access: ClassVar[str] = "outputs"

    def aux_layer(self, student: nn.Module) -> str:
        name = self.params.aux_layer
        if name != "auto":
            resolve_module(student, name)
            return name
        middle = middle_layers(student)
        if not middle:
            raise BenchError("attack 'skeptical_student': aux_layer=auto needs a student with main blocks "
                             "(body.0, body.1, ...) or a feature_layers attribute; name the layer with "
                             "--set attack.aux_layer=NAME.")
        return middle[0]

    def steal(self, api: QueryAPI, pool: Pool, student: nn.Module, ctx: AttackContext) -> nn.Module:
        p = self.params
        steps, lr = p.steps or ctx.profile.student_steps, p.lr or ctx.profile.student_lr
        inputs, answers, _ = collect(api, pool, ctx)
        layer = self.aux_layer(student)
        captured: dict[str, torch.Tensor] = {}

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured["feature"] = output

        handle = resolve_module(student, layer).register_forward_hook(hook)
        try:
            was_training = student.training
            student.eval()
            with torch.no_grad():  # the feature's channels and size, from one query
                out = student(inputs[:1])
            student.train(was_training)
            feature = captured.get("feature")
            if not isinstance(feature, torch.Tensor) or feature.dim() != 4:
                raise BenchError(f"attack 'skeptical_student': the student's layer '{layer}' gives no feature map "
                                 "(N, C, H, W); choose another with --set attack.aux_layer=NAME.")
            (oh, ow), (fh, fw) = out.shape[-2:], feature.shape[-2:]
            if oh % fh or ow % fw or oh // fh != ow // fw:
                raise BenchError(f"attack 'skeptical_student': the student's features at '{layer}' are {fw}x{fh} px "
                                 f"for {ow}x{oh} px outputs; the auxiliary head needs a whole-number ratio: choose "
                                 "another layer with --set attack.aux_layer=NAME.")
            channels = feature.shape[1]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                head = AuxHead(channels, p.aux_width or channels, oh // fh).to(inputs.device)

            def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
                x, y = batch
                captured.clear()
                final = model(x)
                aux = head(captured["feature"], x, tuple(final.shape[-2:]))
                if p.final_target == "answer":
                    target = y
                elif p.final_target == "aux":
                    target = aux.detach()
                else:
                    target = gaussian_blur(y, p.blur_sigma) + high_pass(aux.detach(), p.blur_sigma)
                loss = F.l1_loss(final, target)
                if p.aux_weight:  # with weight 0 the head gets no gradient: vanilla KD's student, exactly
                    loss = loss + p.aux_weight * F.l1_loss(aux, y)
                return loss

            distill(student, inputs, answers, ctx, steps=steps, lr=lr, loss_fn=loss_fn,
                    params=list(student.parameters()) + list(head.parameters()),
                    desc="training student (skeptical)")
        finally:
            handle.remove()
        return student
