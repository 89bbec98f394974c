"""Watermark: every answer carries a keyed mark that a student trained on the answers learns, so the owner can
prove the theft afterwards instead of stopping it.

After Zhang et al., "Model Watermarking for Image Processing Networks" (AAAI 2020; TPAMI extension
arXiv 2103.04980): the owner hides a watermark in every output, a surrogate trained on the outputs reproduces
it, and the owner extracts it from the surrogate's outputs. The paper embeds a logo with a trained embedding
network (a UNet) and extracts it with a trained extraction network, the pair trained adversarially against
surrogates; training those networks for every teacher of a CPU grid costs more than the whole cell, and their
result depends on their own training luck. This module keeps what the test rests on, a secret mark that the
answers carry, a thief's student inherits and only the key holder can detect, as a keyed spread-spectrum mark
detected by correlation (Cox et al.'s classic scheme), the reduction the brief of issue 32 names.

Design, every choice:

- **The mark is a keyed filter of the answer, not a fixed pattern.** The served answer is
  ``y' = y + eps * (h_K * y)``: ``y`` the teacher's answer, ``h_K`` a depthwise ``size`` x ``size`` kernel drawn
  from the key (one per colour channel), ``*`` a 2-D convolution with reflected borders. A fixed pseudo-random
  pattern ``P`` added at fixed pixel positions (``y + eps * P``) cannot be learnt by the students here: they are
  convolutional (translation-equivariant) and train on small crops at random places, so farther than its
  receptive field from a crop's border a student cannot know where in ``P`` a pixel sits and learns ``P``'s
  mean, zero (an argument, not a measurement of this suite). A mark that is a function
  of the image content is what a convolutional student can reproduce, and this one it reproduces exactly: the
  teacher followed by a small linear filter is again a convolutional map.
- **The key.** ``h_K``'s taps are i.i.d. standard normal from a generator seeded by a hash of ``key`` and the
  defense seed (the cell seed), so each seed pair has its own key. Each channel's kernel is made zero-mean (no
  DC: brightness and colour are kept, and the mark sits at mid frequencies where natural images have energy:
  it is about the size of an image gradient, which a smoothing student keeps) and scaled to unit L2 norm, so
  ``eps`` is the filter's gain in every channel.
- **The strength** is ``eps``. At 0 answers are the teacher's exactly. The teacher cost grows as ``eps^2``
  times the energy of ``h_K * y`` (image-dependent: calibrate it to a budget like any defense). Answers are
  deterministic per input (nothing random is drawn per query), so repeating a query cannot average the mark
  away, and one image alone or inside a batch gets the same answer.
- **Extraction** (:func:`extracted_filter`; the owner has its teacher): on probe images ``x_i`` (the cell uses
  its test images) the suspect model's residual against the undefended teacher, ``r_i = f(x_i) - T(x_i)``, is
  fitted by least squares as a depthwise ``size`` x ``size`` filter of ``T(x_i)``, pooled over every pixel of
  every probe (a small ridge, ``RIDGE``, keeps the finest detail of smooth images from amplifying noise), and
  made zero-mean per channel as keys are: ``h_hat``, the filter the suspect applies on top of the teacher. It
  stands in for the paper's extraction network: a student of marked answers has ``h_hat ~ eps * h_K`` plus the
  filter its own errors make; a clean student only the latter.
- **Detection statistic**: ``stat = <h_hat, h_K> / (|h_hat| * |h_K|)``, the normalised correlation of the
  extracted filter with the key (``|h_K| = sqrt(3)``), in [-1, 1]. Fitting first and correlating in filter
  space whitens the test: correlating ``r`` with the predicted mark ``h_K * T(x)`` pixel by pixel weighs the
  few smooth directions natural images are full of, and the mark itself inflates its wrong-key null; it was
  the weaker test on smoke derain students trained 300 steps (z 3.3 against 3.6 at eps 0.1, 3.4 against 4.5
  at eps 0.3).
- **The null: wrong keys, and the analytic value beside it.** For a model that never saw the marked answers
  the true key is one draw of the key distribution like any other, independent of the model: its ``stat`` is
  distributed as that of ``null_keys`` other keys drawn the same way (from a generator the true key does not
  seed) against the same ``h_hat``. ``z = (stat - mean_null) / std_null``, ``p = 1 - Phi(z)`` (one-sided: the
  mark correlates positively). Analytically, a random direction in the ``d = 3 (size^2 - 1)`` dimensions the
  keys span gives ``stat ~ N(0, 1/d)`` (1/sqrt(72) = 0.118 at size 5), which the wrong keys reproduce
  (``tests/test_watermark.py``); the empirical null is used because it is the keys' exact distribution,
  whatever the residual. Not ``N(0, 1/n)`` over the ``n`` probe pixels: a clean student's residual is itself
  an image-dependent filter of ``T(x)`` (students smooth), so it meets a key through the ``d`` taps, not
  through ``n`` independent pixels; and ``z`` is bounded by about ``sqrt(d)`` (8.5), reached by a perfect
  copy of the mark. The clean students of every cell (the reference and the ground-truth student) measure
  the false-positive rate on top (row metrics ``trace_z_ref``, ``trace_z_gt``).
- **The false-positive rate is one over keys, not over suspects.** Clean students depart from the teacher
  in nearly one direction (they smooth alike), so at one key their z nearly coincide, and an owner whose
  key happens to lean towards that direction flags most independent models. Measured on smoke derain cells
  (300 steps, 64 queries, teacher seed 0; a script under ``/tmp``, not committed): 40 keys x 40 reference
  students, z spreads 0.74 over keys and 0.07 over students at one key; 400 keys on one reference student
  give z mean -0.09, sd 0.95, 0.5 % past the 1 % threshold (the null holds over keys). Taking the owner's
  own clean surrogate's filter out of the suspect's first removes little of it (spread over keys 0.72; the
  reference and the ground-truth student both, 0.51), so the detector is left as it is and the report counts
  the keys (``reports/leaderboard.py``; underwater, claims-baselines: "clean 3/30 (1/5 keys)"); measuring
  the rate over clean models needs many keys, i.e. many student seeds.
- **Cost**: the fit accumulates ``3 * size^2`` neighbourhood sums once over the probes; every key then costs a
  dot product, so a thousand wrong keys are free.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from bench.api import Defense, Trace
from bench.params import param
from bench.serving import Query


@dataclass(frozen=True)
class Params:
    eps: float = param(0.1, "gain of the keyed watermark filter (unit-norm, zero-mean kernel per channel); the "
                            "strength")
    key: int = param(0, "the owner's secret key (combined with the defense seed, so each seed pair has its own)")
    size: int = param(5, "side of the keyed kernel, odd (the mark's reach in pixels)")
    null_keys: int = param(1000, "wrong keys whose statistics make the detection null")

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < float("inf"):
            raise ValueError(f"eps must be finite and >= 0, got {self.eps}")
        if self.size < 3 or self.size % 2 == 0:
            raise ValueError(f"size must be odd and >= 3, got {self.size}")
        if self.null_keys < 100:
            raise ValueError(f"null_keys must be >= 100 (a 1 % tail needs them), got {self.null_keys}")


#: ridge of the filter fit, relative to the mean neighbourhood energy (keeps poorly excited directions, the
#: finest detail of smooth images, from amplifying noise)
RIDGE = 1e-2


def _seed(*parts: object) -> int:
    h = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def keyed_kernels(seed: int, count: int, size: int) -> torch.Tensor:
    """``count`` keys' kernels, (count, 3, size * size) float64 (one depthwise kernel per colour channel, taps in
    a conv2d weight's order): i.i.d. normal taps, zero-mean and of unit L2 norm per channel."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((count, 3, size * size), generator=g, dtype=torch.float64)
    w = w - w.mean(dim=-1, keepdim=True)
    return w / w.norm(dim=-1, keepdim=True)


def _patches(y: torch.Tensor, size: int) -> torch.Tensor:
    """(3, size * size, H * W) of one image (1, 3, H, W): each channel's size x size neighbourhood of every
    pixel (reflected borders), in the order of a conv2d weight's taps."""
    p = F.unfold(F.pad(y, (size // 2,) * 4, mode="reflect"), size)  # (1, 3 * size^2, H * W), channel-major
    return p.reshape(3, size * size, -1)


def extracted_filter(outputs: Sequence[torch.Tensor], teacher_outputs: Sequence[torch.Tensor],
                     size: int) -> torch.Tensor:
    """The filter a model applies on top of the teacher, (3, size * size) float64: the least-squares fit of its
    residual ``f(x) - T(x)`` on each channel's size x size neighbourhoods of ``T(x)``, pooled over the probes
    (ridge ``RIDGE`` times the mean neighbourhood energy), made zero-mean per channel as the keys are."""
    n = size * size
    cross = torch.zeros(3, n, dtype=torch.float64)
    auto = torch.zeros(3, n, n, dtype=torch.float64)
    for out, t in zip(outputs, teacher_outputs):
        t64 = t.detach().to("cpu", torch.float64)
        r = (out.detach().to("cpu", torch.float64) - t64).reshape(3, 1, -1)  # (3, 1, H * W)
        p = _patches(t64, size)  # (3, size^2, H * W)
        cross += (p * r).sum(-1)
        auto += p @ p.transpose(1, 2)
    auto = auto + RIDGE * auto.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(n, dtype=auto.dtype)
    h = torch.linalg.solve(auto, cross[..., None])[..., 0]
    return h - h.mean(-1, keepdim=True)


class Watermark(Defense):
    """A keyed filter on every answer (y + eps * h_K * y), found in a thief's student by correlation.

    Detection tests the key against a null of wrong keys (module docstring)."""

    Params: ClassVar[type] = Params
    strength: ClassVar[str | None] = "eps"
    strength_range: ClassVar[tuple[float, float] | None] = (0.0, 0.1)
    strength_spread: ClassVar[tuple[float, ...] | None] = (0.02, 0.05, 0.1, 0.2)
    traces: ClassVar[bool] = True
    version: ClassVar[str] = "1"

    def channels(self) -> tuple[str, ...]:
        return ("answers",)

    def kernel(self) -> torch.Tensor:
        """The key's kernel, (3, size * size) float64."""
        return keyed_kernels(_seed("watermark", self.params.key, self.seed), 1, self.params.size)[0]

    def mark(self, y: torch.Tensor) -> torch.Tensor:
        """``h_K * y`` for a batch (N, 3, H, W), in ``y``'s dtype and device."""
        k = self.params.size
        w = self.kernel().reshape(3, 1, k, k).to(y.device, y.dtype)
        return F.conv2d(F.pad(y, (k // 2,) * 4, mode="reflect"), w, groups=3)

    def perturb_answers(self, answers: torch.Tensor, query: Query) -> torch.Tensor:
        if self.params.eps == 0:
            return answers
        return answers + self.params.eps * self.mark(answers)

    @torch.no_grad()
    def trace(self, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
              teacher_outputs: Sequence[torch.Tensor]) -> Trace:
        h = extracted_filter(outputs, teacher_outputs, self.params.size)
        keys = torch.cat([self.kernel()[None],
                          keyed_kernels(_seed("watermark-null", self.params.key, self.seed), self.params.null_keys,
                                        self.params.size)])
        stats = torch.einsum("nci,ci->n", keys, h) / max(float(h.norm()) * math.sqrt(3.0), 1e-300)
        stat, null = float(stats[0]), stats[1:]
        z = (stat - float(null.mean())) / max(float(null.std()), 1e-12)
        return Trace(stat=stat, z=z, p=0.5 * math.erfc(z / math.sqrt(2.0)))
