"""Helpers shared by the synthetic degradations of the built-in tasks.

- :func:`depth_map`: a smooth synthetic scene depth (a tilted ramp, far at the top, plus low-frequency
  noise), used by the scattering models of the dehaze and underwater tasks.
- :func:`check_range` / :func:`draw`: ``(lo, hi)`` parameter ranges, validated once and drawn per image.

Everything here draws only from the ``numpy.random.Generator`` it is given, so a degradation seeded the
same way gives the same image. Depth maps depend on the image size only through their sampling grid:
the same generator state gives the same scene layout at any resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def check_range(name: str, value: Sequence[float], lo: float, hi: float, *, open_lo: bool = False) -> None:
    """Raise ValueError unless ``value`` is a pair ``(a, b)`` with ``lo <= a <= b <= hi``.

    With ``open_lo`` the lower bound is strict (``lo < a``). Parameters given as a single number on the
    command line arrive as a 1-tuple and are accepted as the fixed range ``(a, a)``.
    """
    vals = tuple(value)
    if len(vals) == 1:
        vals = vals * 2
    bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
    if len(vals) != 2:
        raise ValueError(f"parameter '{name}' must be a range LO,HI, got {value!r}")
    a, b = (float(v) for v in vals)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"parameter '{name}' must be finite, got {value!r}")
    if a > b:
        raise ValueError(f"parameter '{name}' range must have LO <= HI, got {a}, {b}")
    if (a <= lo if open_lo else a < lo) or b > hi:
        raise ValueError(f"parameter '{name}' must lie in {bound}, got {a}, {b}")


def draw(rng: np.random.Generator, value: Sequence[float]) -> float:
    """One uniform draw from the range ``(lo, hi)`` (a 1-tuple is a fixed value; it still draws once,
    so that the random stream does not depend on whether a range is degenerate)."""
    vals = tuple(value)
    lo, hi = (float(vals[0]), float(vals[-1]))
    return float(lo + (hi - lo) * rng.random())


def smooth_noise(h: int, w: int, rng: np.random.Generator, *, cells: int = 3, octaves: int = 2) -> np.ndarray:
    """Low-frequency noise (H, W) float32 in [0, 1]: white noise on a coarse grid (``cells`` across the
    short side, doubling per octave, amplitude halving), upsampled bicubically and rescaled to [0, 1]."""
    short = min(h, w)
    total = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        n = cells * 2**o
        gh = max(2, round(n * h / short)) + 1
        gw = max(2, round(n * w / short)) + 1
        grid = torch.from_numpy(rng.standard_normal((1, 1, gh, gw)).astype(np.float32))
        up = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[0, 0].numpy()
        total += amp * up
        amp *= 0.5
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-8)


def depth_map(
    h: int,
    w: int,
    rng: np.random.Generator,
    *,
    near: float = 0.1,
    tilt_deg: float = 30.0,
    ramp_weight: tuple[float, float] = (0.5, 0.8),
) -> np.ndarray:
    """A smooth synthetic depth map (H, W) float32 in [``near``, 1] (1 = farthest).

    A linear ramp, far at the top and near at the bottom like a ground plane seen from eye level, turned
    by a random angle in [-``tilt_deg``, ``tilt_deg``], is mixed with :func:`smooth_noise` (the ramp's
    weight drawn from ``ramp_weight``), rescaled to [0, 1] and mapped to [``near``, 1].
    """
    theta = math.radians(tilt_deg) * (2.0 * rng.random() - 1.0)
    wr = draw(rng, ramp_weight)
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None] * (h / max(h, w))
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :] * (w / max(h, w))
    ramp = -(ys * math.cos(theta) + xs * math.sin(theta))  # top (y = -1) is far
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-8)
    d = wr * ramp + (1.0 - wr) * smooth_noise(h, w, rng)
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-8)
    return (near + (1.0 - near) * d).astype(np.float32)
