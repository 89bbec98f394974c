"""Deraining (``derain``).

Degradation model: one layer of synthetic rain streaks (as in the Rain100L / Rain1400 style of
synthesis), blended onto the clean image::

    seeds = Bernoulli(density) * U(0.5, 1)          # sparse drops with random brightness
    R     = intensity * (seeds (*) K_{angle, length, width}),  clipped to [0, 1]
    I     = 1 - (1 - J) * (1 - R)   (screen blend; or  I = clip(J + R)  with blend=add)

``K`` is a motion-blur kernel: a straight line of the given length, turned ``angle`` degrees from
vertical, faded towards both ends and blurred across by a Gaussian of sigma ``width`` pixels; it is
scaled to a peak of 1 so that an isolated streak's brightness is ``intensity`` times its drop's. The
streaks are grey (the same in every channel). Seeds are drawn over the image plus a margin, so streaks
enter across the border. ``angle``, ``length``, ``density``, ``width`` and ``intensity`` are drawn per
image; every streak in one image shares the angle and length (one rain layer).

Parameters (ranges ``LO,HI``, drawn per image):
- ``angle`` in [-60, 60], default -15,15: streak direction in degrees from vertical.
- ``length`` in (0, 1], default 0.06,0.16: streak length as a fraction of the image's short side
  (so a streak looks the same at every profile's image size; 11-31 px at 192 px).
- ``density`` in (0, 0.2], default 0.0005,0.003: fraction of pixels that seed a streak.
- ``width`` in [0.3, 5], default 0.6,1.0: Gaussian sigma across the streak, in pixels.
- ``intensity`` in (0, 1], default 0.7,1.0: peak brightness of a streak.
- ``blend``: ``screen`` (default) or ``add`` (added, then clipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from bench.api import Task
from bench.data import HORIZONTAL_FLIPS
from bench.params import param
from bench.synth import check_range, draw


@dataclass(frozen=True)
class DerainParams:
    angle: tuple[float, ...] = param((-15.0, 15.0), "angle from vertical (degrees), range in [-60, 60]")
    length: tuple[float, ...] = param((0.06, 0.16), "streak length / image short side, range LO,HI in (0, 1]")
    density: tuple[float, ...] = param((0.0005, 0.003), "fraction of pixels seeding a streak, in (0, 0.2]")
    width: tuple[float, ...] = param((0.6, 1.0), "Gaussian sigma across a streak (px), in [0.3, 5]")
    intensity: tuple[float, ...] = param((0.7, 1.0), "peak streak brightness, range LO,HI in (0, 1]")
    blend: str = param("screen", "how streaks combine with the image", choices=("screen", "add"))

    def __post_init__(self) -> None:
        check_range("angle", self.angle, -60.0, 60.0)
        check_range("length", self.length, 0.0, 1.0, open_lo=True)
        check_range("density", self.density, 0.0, 0.2, open_lo=True)
        check_range("width", self.width, 0.3, 5.0)
        check_range("intensity", self.intensity, 0.0, 1.0, open_lo=True)
        if self.blend not in ("screen", "add"):
            raise ValueError(f"parameter 'blend' must be screen or add, got {self.blend!r}")


def streak_kernel(length: float, angle_deg: float, width: float) -> np.ndarray:
    """A line of ``length`` px at ``angle_deg`` from vertical, faded at the ends, Gaussian-blurred
    across by ``width`` px, scaled to a peak of 1 (odd square, float64)."""
    half = length / 2.0
    r = int(math.ceil(half + 3.0 * width)) + 1
    size = 2 * r + 1
    k = np.zeros((size, size))
    n = max(8, int(4 * length))
    s = np.linspace(-half, half, n)
    weight = np.sqrt(np.clip(np.sin(np.pi * (s + half) / (2 * half)), 0.0, 1.0))  # fade in and out
    a = math.radians(angle_deg)
    ys, xs = r + s * math.cos(a), r + s * math.sin(a)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(k, (y0 + dy, x0 + dx), wy * wx * weight)
    k = gaussian_filter(k, width)
    return k / max(float(k.max()), 1e-12)


class Derain(Task):
    """Synthetic rain streaks: sparse drops smeared by a rotated line kernel, screen-blended."""

    Params = DerainParams
    # Training augmentation: mirror images only (rain falls down).
    augment_transforms = HORIZONTAL_FLIPS

    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        h, w = clean.shape[:2]
        angle = draw(rng, p.angle)
        length = max(2.0, draw(rng, p.length) * min(h, w))
        density = draw(rng, p.density)
        width = draw(rng, p.width)
        intensity = draw(rng, p.intensity)
        k = streak_kernel(length, angle, width)
        m = k.shape[0] - 1  # seeds over a margin, so streaks cross the border
        u = rng.random((h + m, w + m))
        seeds = np.where(u < density, 0.5 + 0.5 * rng.random((h + m, w + m)), 0.0)
        rain = np.clip(intensity * fftconvolve(seeds, k, mode="valid"), 0.0, 1.0)[..., None]
        if p.blend == "screen":
            out = 1.0 - (1.0 - clean) * (1.0 - rain)
        else:
            out = clean + rain
        return np.clip(out, 0.0, 1.0).astype(np.float32)
