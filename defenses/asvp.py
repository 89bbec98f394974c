"""ASVP: Adaptive Singular Value Perturbation of the teacher's internal features.

Paper: Han Hu, Zhuoran Zheng, Chen Lyu, "Defense against Unauthorized Distillation in Image Restoration
via Feature Space Perturbation", arXiv:2510.08925 (2025). What the text gives: an SVD of the teacher's
internal feature maps; the top-k singular values are amplified by a factor h (sigma_i <- h sigma_i,
i <= k), k is chosen adaptively, a spatial coherence constraint keeps reconstruction fidelity; a runtime,
plug-and-play defense without retraining.

What the text leaves open, and what this module chooses (each choice is a parameter, DESIGN section 5):

- ``layers``: which modules are perturbed. Default ``middle``: the middle body block(s) of the reference
  architecture (:func:`bench.models.middle_layers`: one block for an odd count, the central two for an
  even count), or the middle of the blocks a user's model declares in its ``feature_layers`` attribute.
  Any module names of the teacher may be given instead. In ``inline`` mode a later
  perturbed layer sees the already perturbed output of an earlier one (the effects compound).
- Each sample of a batch is decomposed on its own (never the batch as one matrix), so an image's answer
  does not depend on the rest of its batch.
- ``layout``: which matrix is decomposed. ``channel`` (default): each sample's (C, H, W) feature map as
  a C x HW matrix, so the singular vectors are channel mixtures times spatial patterns. ``spatial``:
  each channel of each sample as its own H x W matrix.
- ``k_mode``: ``energy`` (default, the "adaptive" k): per matrix, the smallest k whose squared singular
  values hold a fraction ``tau`` of the energy ||F||_F^2, at least 1 and at most ``k_max``. The defaults,
  tau = 0.7 and k_max = 16, were chosen from the spectra of the quick derain teachers (seeds 0 and 1, the
  middle blocks, the 8 test images; ``docs/results/asvp-v3/accuracy.py``) so that k adapts: channel layout
  k = 2-4 (teacher 0) and 1-5 (teacher 1) over 16 matrices; spatial layout k = 1-16 over 512 matrices,
  at the cap in 17 % and 27 % of them. The earlier tau = 0.9, k_max = 8 hit the cap in 14 of 16 channel
  matrices (teacher 1) and in 97-98 % of spatial ones: k did not adapt.
  ``fixed``: k = ``k`` for every matrix. In the ``spatial`` layout k is per (sample, channel) matrix.
  Where sigma_k = sigma_{k+1} the top-k subspace is not unique and any choice of it is as faithful.
- ``h``: the amplification (the strength calibrated by ``bench calibrate``). Values below 1 attenuate
  the top-k directions instead (h = 1 is the identity); they are allowed, for sweeps.
- ``mode``: ``inline`` (default): the amplified features replace the originals and flow on through the
  teacher, so answers change; this is the reading that fits "a spatial coherence constraint preserves
  reconstruction fidelity" (a constraint that would be pointless if answers never changed).
  ``exposed``: only the copy of the features exposed to feature-level attackers is amplified, answers
  stay bit-exact (an ablation; a defense in this mode touches no answers).
- ``coherence``: the perturbation dF = amplified - F is multiplied by a smooth spatial mask, the local
  feature energy (mean over channels of F^2, box-averaged over a ``window`` x ``window`` neighbourhood,
  zero padding not counted) normalised per sample to a maximum of 1, so that flat, low-energy regions
  are left (nearly) coherent; then it is bounded per sample: if ||dF|| > ``rho`` ||F|| it is scaled down
  to ``rho`` ||F|| (Frobenius norms over the sample's whole feature map). Note that before masking
  ||dF|| = |h - 1| ||P_k F|| <= |h - 1| ||F||, so the bound can only bind when |h - 1| > rho (at the
  defaults, h = 1.5 and rho = 0.5, it never does; it matters in strength sweeps). With
  ``coherence=false`` dF is used as is.

How it is computed (ASVP runs on every query, so the hot path does no SVD of a large matrix):

- ``channel``: with F the C x HW matrix and U_k the top-k eigenvectors of the C x C Gram matrix F F^T
  (accumulated in the features' dtype, decomposed in float64 by ``torch.linalg.eigh``), amplifying the
  top-k singular values is dF = (h - 1) U_k U_k^T F: same singular vectors, top-k singular values times
  h. The eigenvalues are the squared singular values, so the energy rule for k costs nothing extra.
  Because U_k has orthonormal columns, the per-pixel energy of dF is that of the small k x HW factor
  U_k^T F, so the coherence mask and bound are applied to that factor and one fused product
  F + U_k (s * mask * (h - 1) U_k^T F) gives the answer (s: the bound's scale). At the defaults, on
  RestorationCNN(32, 4) and a 1x3x256x256 input on 2 CPU cores, the served forward costs about 1.15x
  the teacher's (tests/test_bench_asvp.py; the spatial layout 2.4x at its accurate defaults, 1.5x at
  ``power_iters=1``; a full SVD about 7x, one run on 2026-11-29).
- ``spatial``: a randomized low-rank SVD (Halko, Martinsson, Tropp 2011) of each H x W matrix, taken
  with its shorter side as rows: a Gaussian test matrix with ``k + oversample`` columns (``k_max`` in
  energy mode), ``power_iters`` power iterations (Y <- A (A^T Y), re-orthonormalised by QR before every
  iteration but the first: orthonormalising changes a basis, not the subspace it spans, and on these
  spectra float32 keeps every direction that matters; see ``_spectrum``), a QR of the last Y, then the
  eigen-decomposition of the small projected Gram matrix. The test matrix comes from a generator with a
  fixed seed, the same for every matrix, so answers are deterministic and do not depend on the rest of
  the batch. When the shorter side is at most ``k + oversample`` the exact Gram path is used. The
  randomized path is exact up to ~(sigma_{l+1} / sigma_k)^(2 power_iters + 1), plus float32 rounding,
  which matters only on steep spectra (1e-3 of dF where sigma_1 / sigma_k = 1000); on spectra without a
  gap the amplified subspace is an approximation (so is the "top-k" itself then). ``power_iters``
  defaults to 6, so that the default is what the text describes (a top-k SVD), not an approximation of
  it: on the quick derain teachers' 8 test images (h = 1.5) the served answer's perturbation differs from
  the full-SVD one by 0.8 % (relative L2, mean; at most 3.4 % and 3.8 % for teachers 0 and 1) at 6
  iterations, against 13.7 % / 8.3 % at 1, 6.4 % / 3.7 % at 2, 2.1 % / 1.5 % at 4, 0.4 % / 0.5 % at 8
  (``docs/results/asvp-v3``). Each iteration costs two passes over the features; ``power_iters=1`` stays
  available for speed. In energy mode
  only the top l = ``k_max + oversample`` singular values are known: k is the smallest whose energies
  reach ``tau`` of the exact total ||F||^2, else ``k_max``.
- ``use_reference`` (tests and benchmarks only): a full ``torch.linalg.svd`` per matrix instead.

ASVP draws no randomness, so it is deterministic per input, as DESIGN section 2 requires.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from bench import BenchError
from bench.api import Defense
from bench.models import middle_layers
from bench.params import param
from bench.serving import Query

Layout = Literal["channel", "spatial"]


@dataclass(frozen=True)
class Params:
    layers: tuple[str, ...] = param(("middle",), "modules whose output features are perturbed; "
                                                 "'middle' = the middle body block(s)")
    layout: Layout = param("channel", "decompose each sample as a C x HW matrix (channel) "
                                      "or each channel as an H x W matrix (spatial)")
    k_mode: Literal["fixed", "energy"] = param("energy", "k fixed to 'k', or the smallest k holding a "
                                                         "fraction 'tau' of the energy (<= k_max)")
    k: int = param(4, "number of amplified singular values when k_mode=fixed")
    tau: float = param(0.7, "energy fraction the top-k singular values must hold (k_mode=energy)")
    k_max: int = param(16, "upper bound on the adaptive k (k_mode=energy)")
    h: float = param(1.5, "amplification of the top-k singular values (sigma <- h * sigma)")
    mode: Literal["inline", "exposed"] = param("inline", "inline: perturbed features flow on (answers "
                                                         "change); exposed: only exposed features change")
    coherence: bool = param(True, "modulate the perturbation by a smooth local-energy mask and bound "
                                  "it by rho * ||F||")
    rho: float = param(0.5, "coherence bound: ||dF|| <= rho * ||F|| per sample")
    window: int = param(7, "side (odd) of the box window smoothing the coherence mask")
    oversample: int = param(8, "extra columns of the randomized SVD (spatial layout)")
    power_iters: int = param(6, "power iterations of the randomized SVD (spatial layout); 1 is faster but "
                                "14 % off the full SVD on trained teachers")
    use_reference: bool = param(False, "test/benchmark only: full SVD instead of the fast paths")

    def __post_init__(self) -> None:
        if not self.layers or any(not name for name in self.layers):
            raise ValueError("layers must name at least one module (or 'middle')")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {self.k_max}")
        if not 0.0 <= self.h <= 1000.0:  # beyond, float32 features overflow or the top-k vanish in rounding
            raise ValueError(f"h must be in [0, 1000] (1: no change), got {self.h}")
        if not 0.0 < self.rho < float("inf"):
            raise ValueError(f"rho must be finite and > 0, got {self.rho}")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 1, got {self.window}")
        if self.oversample < 0:
            raise ValueError(f"oversample must be >= 0, got {self.oversample}")
        if self.power_iters < 0:
            raise ValueError(f"power_iters must be >= 0, got {self.power_iters}")


# ------------------------------------------------------------------------------------------ spectra
# Both layouts reduce to a batch of matrices A (B, m, n) (for the spatial layout with m <= n) and a
# low-rank factorisation of the perturbation, dA = L @ R with L (B, m, r) and R (B, r, n):
# - exact path: U = eigenvectors of A A^T (float64, descending), L = U_r, R = w * (U_r^T A);
# - randomized path: A ~ Q Bm with Q (B, m, l) orthonormal, U = eigenvectors of Bm Bm^T,
#   L = Q U_r, R = w * (U_r^T Bm);
# where w_i = h - 1 for the top k_b directions of matrix b and 0 for the rest (r = the largest k).
# The eigenvalues are the squared singular values of A (the top l of them, randomized).

_TEST_MATRIX_SEED = 0x5A5F


@functools.lru_cache(maxsize=16)
def _test_matrix(n: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fixed Gaussian (n, cols) test matrix for the range finder (same for every matrix and call)."""
    g = torch.Generator().manual_seed(_TEST_MATRIX_SEED)
    return torch.randn(n, cols, generator=g, dtype=torch.float64).to(device, dtype)


def _matrices(features: torch.Tensor, layout: str) -> tuple[torch.Tensor, bool]:
    """(N, C, H, W) -> a batch of matrices, and whether the spatial matrices were transposed."""
    if features.dim() != 4:
        raise ValueError(f"ASVP expects features (N, C, H, W), got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    if layout == "channel":
        return features.reshape(n, c, h * w), False
    if layout == "spatial":
        mats = features.reshape(n * c, h, w)
        return (mats.transpose(1, 2), True) if h > w else (mats, False)
    raise ValueError(f"layout must be 'channel' or 'spatial', got {layout!r}")


def _from_matrices(mats: torch.Tensor, transposed: bool, shape: torch.Size) -> torch.Tensor:
    return (mats.transpose(1, 2) if transposed else mats).reshape(shape)


def _spectrum(mats: torch.Tensor, rank: int, oversample: int, power_iters: int, randomized: bool):
    """(Q or None, Bm, U, ev, total): A ~ Q Bm, Bm Bm^T = U diag(ev) U^T (descending), total = ||A||^2.

    The Gram matrix is accumulated in the features' dtype and decomposed in float64: in float32 the
    amplified subspace agrees with a float64 SVD to ~1e-6 on teacher features, at under half the
    cost of a float64 Gram matrix."""
    m, n = mats.shape[-2:]
    cols = min(rank + oversample, m, n)
    q = None
    if randomized and m > cols:
        omega = _test_matrix(n, cols, mats.dtype, mats.device)
        # omega is shared by all matrices: one GEMM where the batch is contiguous
        y = (mats.reshape(-1, n) @ omega).view(-1, m, cols) if mats.is_contiguous() else mats @ omega
        for i in range(power_iters):
            # Y <- A (A^T orth(Y)), with A^T Q as (Q^T A)^T: the product reads A row-major, about 2x faster
            # than A^T @ Q on CPU. orth() only changes Y's basis, not its span, so it is skipped where Y is
            # well conditioned enough: on the first Y = A Omega (Omega Gaussian) and on A^T Q. The final Y
            # then has condition number ~(sigma_1 / sigma_l)^3 (at most 43^3 on the quick teachers'
            # features); directions it loses to float32 rounding (sigma_i < ~4e-3 sigma_1) carry under
            # 4e-3 of ||dF||, well below the range finder's own error.
            basis = y if i == 0 else torch.linalg.qr(y).Q
            y = mats @ (basis.transpose(1, 2) @ mats).transpose(1, 2)
        q = torch.linalg.qr(y).Q
        bm = q.transpose(1, 2) @ mats
        # ||A||^2 from float32 row norms (short sums, exact enough) summed in float64: no copy of A (a
        # float64 copy cost more than the rest of the spectrum)
        total = torch.linalg.vector_norm(mats, dim=-1).double().square().sum(-1)
    else:
        bm = mats
    gram = (bm @ bm.transpose(1, 2)).double()
    ev, u = torch.linalg.eigh(gram)
    if q is None:
        total = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return q, bm, u.flip(-1), ev.flip(-1).clamp_min(0), total


def _k_from_energy(ev: torch.Tensor, total: torch.Tensor, tau: float, k_max: int) -> torch.Tensor:
    """Smallest k with sum_{i<=k} sigma_i^2 >= tau * total, clamped to [1, min(k_max, rank)]."""
    below = ev.cumsum(-1) < tau * total.unsqueeze(-1)
    return (below.sum(-1) + 1).clamp(1, min(k_max, ev.shape[-1]))


def _factors(q, bm, u, k: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R = (h - 1) Q U_k U_k^T Bm, per-matrix k (LongTensor (B,))."""
    r = min(int(k.max()), u.shape[-1])
    uk = u[..., :r]
    weights = (h - 1.0) * (torch.arange(r, device=k.device) < k.unsqueeze(-1))
    right = (uk * weights.unsqueeze(-2)).transpose(1, 2).to(bm.dtype) @ bm
    uk = uk.to(bm.dtype)
    return (uk if q is None else q @ uk), right


def _per_matrix_k(k: int | torch.Tensor, features: torch.Tensor, layout: str) -> torch.Tensor:
    """k as a LongTensor with one entry per matrix of the layout ((N,) or (N * C,))."""
    n, c = features.shape[:2]
    kt = torch.as_tensor(k, dtype=torch.long, device=features.device)
    if (kt < 1).any():
        raise ValueError("k must be >= 1")
    if layout == "channel":
        return kt.expand(n).clone()
    if kt.dim() == 1:
        kt = kt.unsqueeze(-1)
    return kt.expand(n, c).reshape(-1).clone()


def _fast_factors(features: torch.Tensor, layout: str, k: int | torch.Tensor | None, h: float, *,
                  tau: float = 1.0, k_max: int = 1, oversample: int = 8, power_iters: int = 1):
    """(mats, transposed, L, R, total, kept): the perturbation of every matrix as L @ R, ||A||^2 and
    ||P_k A||^2 = the sum of the top-k squared singular values (so ||L @ R|| = |h - 1| sqrt(kept));
    k=None: energy rule."""
    mats, transposed = _matrices(features, layout)
    kt = None if k is None else _per_matrix_k(k, features, layout)
    rank = k_max if kt is None else int(kt.max())
    q, bm, u, ev, total = _spectrum(mats, rank, oversample, power_iters, layout == "spatial")
    if kt is None:
        kt = _k_from_energy(ev, total, tau, k_max)
    left, right = _factors(q, bm, u, kt, h)
    kept = (ev * (torch.arange(ev.shape[-1], device=ev.device) < kt.unsqueeze(-1))).sum(-1)
    return mats, transposed, left, right, total, kept


# ------------------------------------------------------------------------------------- public helpers
def amplify_top_k(features: torch.Tensor, k: int | torch.Tensor, h: float, layout: Layout = "channel", *,
                  oversample: int = 8, power_iters: int = 1) -> torch.Tensor:
    """``features`` with the top-k singular values of each matrix of ``layout`` multiplied by ``h``.

    ``k``: an int, or a LongTensor with one k per sample (N,) or, for the spatial layout, per
    (sample, channel) (N, C). Fast paths: Gram eigen-decomposition (channel), randomized SVD (spatial).
    """
    mats, transposed, left, right, _, _ = _fast_factors(features, layout, k, h, oversample=oversample,
                                                        power_iters=power_iters)
    return _from_matrices(torch.baddbmm(mats, left, right), transposed, features.shape)


def energy_k(features: torch.Tensor, tau: float, k_max: int, layout: Layout = "channel", *,
             oversample: int = 8, power_iters: int = 1) -> torch.Tensor:
    """The adaptive k per matrix: (N,) for the channel layout, (N, C) for the spatial layout."""
    mats, _ = _matrices(features, layout)
    _, _, _, ev, total = _spectrum(mats, k_max, oversample, power_iters, layout == "spatial")
    k = _k_from_energy(ev, total, tau, k_max)
    return k if layout == "channel" else k.view(features.shape[:2])


def _reference_delta(features: torch.Tensor, k: torch.Tensor | None, h: float, layout: str,
                     tau: float = 1.0, k_max: int = 1) -> torch.Tensor:
    """dF by a full float64 SVD of every matrix; k=None: the energy rule on the exact spectrum."""
    mats, transposed = _matrices(features, layout)
    u, s, vh = torch.linalg.svd(mats.double(), full_matrices=False)
    if k is None:
        k = _k_from_energy(s.square(), s.square().sum(-1), tau, k_max)
    keep = torch.arange(s.shape[-1], device=s.device) < k.unsqueeze(-1)
    d = (u * ((h - 1.0) * s * keep).unsqueeze(-2)) @ vh
    return _from_matrices(d.to(features.dtype), transposed, features.shape)


def amplify_top_k_reference(features: torch.Tensor, k: int | torch.Tensor, h: float,
                            layout: Layout = "channel") -> torch.Tensor:
    """Same as :func:`amplify_top_k`, by a full float64 ``torch.linalg.svd`` (slow; for tests)."""
    return features + _reference_delta(features, _per_matrix_k(k, features, layout), h, layout)


@functools.lru_cache(maxsize=16)
def _box_counts(hh: int, ww: int, window: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(hh, ww): how many pixels of the image each window x window box centred on a pixel holds."""
    def along(n: int) -> torch.Tensor:
        i, r = torch.arange(n), window // 2
        return (i.clamp(max=r) + (n - 1 - i).clamp(max=r) + 1).double()

    return torch.outer(along(hh), along(ww)).to(device, dtype)


def _box_sum(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Sum over each run of ``window`` entries along ``dim`` (-1 or -2) centred on an entry, zero outside:
    O(HW) work, exact sums of non-negative entries (a cumulative sum would cancel in flat regions)."""
    r = window // 2
    padded = torch.nn.functional.pad(x, (r, r) if dim == -1 else (0, 0, r, r))
    return padded.unfold(dim, window, 1).sum(-1)


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of (N, 1, H, W) maps over each window x window neighbourhood inside the image, i.e.
    ``avg_pool2d(x, window, 1, window // 2, count_include_pad=False)``, separably (avg_pool2d on one
    channel is several times slower on CPU)."""
    hh, ww = x.shape[-2:]
    return _box_sum(_box_sum(x, window, -1), window, -2).div_(_box_counts(hh, ww, window, x.dtype, x.device))


def _channel_energy(features: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): the sum over channels of F^2, read once, without an (N, C, H, W) temporary (one
    accumulated product per channel; the temporary cost more than the arithmetic)."""
    energy = features[:, 0] * features[:, 0]
    for c in range(1, features.shape[1]):
        energy.addcmul_(features[:, c], features[:, c])
    return energy.unsqueeze(1)


def coherence_mask(features: torch.Tensor, window: int) -> torch.Tensor:
    """(N, 1, H, W) smooth local feature energy, normalised per sample to a maximum of 1.

    (The sum over channels of F^2 is used: the mean differs by the factor C, which the
    normalisation removes.)"""
    smooth = _box_mean(_channel_energy(features), window)
    peak = smooth.amax(dim=(1, 2, 3), keepdim=True)
    return smooth.div_(peak.clamp_min(torch.finfo(smooth.dtype).tiny))


def _bound_scale(delta_norm: torch.Tensor, total: torch.Tensor, rho: float) -> torch.Tensor:
    """Per-sample factor min(1, rho ||F|| / ||dF||) (float64), from ||dF|| and total = ||F||^2."""
    return (rho * total.sqrt() / delta_norm.double().clamp_min(1e-300)).clamp(max=1.0)


def _cannot_bind(kept: torch.Tensor, total: torch.Tensor, p: Params) -> bool:
    """Whether ||dF|| = |h - 1| ||P_k F|| is within rho ||F|| for every sample: the mask is at most 1, so
    then the coherence bound cannot bind and its norm pass is skipped."""
    return bool(((p.h - 1.0) ** 2 * kept <= p.rho ** 2 * total).all())


def perturb(features: torch.Tensor, p: Params) -> torch.Tensor:
    """ASVP's perturbed features for one layer under ``p`` (the whole algorithm; deterministic)."""
    n = features.shape[0]
    k = p.k if p.k_mode == "fixed" else None
    kept = None  # ||P_k F||^2 per sample, where known from the spectrum
    if p.use_reference:
        kt = None if k is None else _per_matrix_k(k, features, p.layout)
        delta = _reference_delta(features, kt, p.h, p.layout, p.tau, p.k_max)
        total = features.double().pow(2).flatten(1).sum(1)
    else:
        mats, transposed, left, right, total, kept = _fast_factors(
            features, p.layout, k, p.h, tau=p.tau, k_max=p.k_max, oversample=p.oversample,
            power_iters=p.power_iters)
        total, kept = total.view(n, -1).sum(1), kept.view(n, -1).sum(1)
        if p.layout == "channel" and p.coherence:
            # dF = L @ R with orthonormal columns in L (C, r): the per-pixel energy of dF is that of R's
            # column, so mask and bound act on the small R and one fused product gives the answer.
            right.mul_(coherence_mask(features, p.window).view(n, 1, -1))
            if not _cannot_bind(kept, total, p):
                scale = _bound_scale(torch.linalg.vector_norm(right, dim=(1, 2)), total, p.rho)
                left = left * scale.to(left.dtype).view(n, 1, 1)
            return torch.baddbmm(mats, left, right).view_as(features)
        delta = _from_matrices(torch.baddbmm(mats, left, right) if not p.coherence else left @ right,
                               transposed, features.shape)
        if not p.coherence:
            return delta  # F + L R in one product
    if not p.coherence:
        return features + delta
    mask = coherence_mask(features, p.window)
    # Where the bound cannot bind the answer is one fused pass (no pass over the masked dF for its norm;
    # each full-size pass costs about as much as the arithmetic).
    if kept is not None and _cannot_bind(kept, total, p):
        return torch.addcmul(features, delta, mask, out=delta)  # in place on the fresh delta
    delta.mul_(mask)  # in place on the fresh delta
    scale = _bound_scale(torch.linalg.vector_norm(delta.flatten(1), dim=1), total, p.rho)
    return delta.mul_(scale.to(delta.dtype).view(n, 1, 1, 1)).add_(features)


# -------------------------------------------------------------------------------------------- defense
class ASVP(Defense):
    """Adaptive Singular Value Perturbation (arXiv:2510.08925) at the teacher's feature layers."""

    Params: ClassVar[type] = Params
    strength: ClassVar[str | None] = "h"
    strength_range: ClassVar[tuple[float, float] | None] = (1.0, 2.0)  # h = 1 is the identity
    strength_spread: ClassVar[tuple[float, ...] | None] = (1.1, 1.25, 1.5, 2.0)
    # the coherence bound caps ||dF|| at rho ||F|| whatever h is; on some models that is too little to matter
    saturation_hint: ClassVar[str] = ("raise the coherence bound (--set defense.rho=2) or drop it "
                                      "(--set defense.coherence=false)")
    version: ClassVar[str] = "2"

    @property
    def inline(self) -> bool:  # type: ignore[override]
        return self.params.mode == "inline"

    def channels(self) -> tuple[str, ...]:
        return ("answers", "features") if self.inline else ("features",)

    def feature_layers(self, model: nn.Module) -> Sequence[str]:
        names: list[str] = []
        for name in self.params.layers:
            if name == "middle":
                middle = middle_layers(model)
                if not middle:
                    raise BenchError("defense 'asvp': layers=middle needs a model with body blocks "
                                     "(body.0, body.1, ...) or a feature_layers attribute; name the layers "
                                     "with --set defense.layers=NAME,NAME (module names of the model).")
                names.extend(middle)
            else:
                names.append(name)
        return list(dict.fromkeys(names))

    def perturb_features(self, layer: str, features: torch.Tensor, query: Query) -> torch.Tensor:
        return perturb(features, self.params)
