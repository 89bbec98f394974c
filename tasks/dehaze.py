"""Dehazing (``dehaze``).

Degradation model: the atmospheric scattering model (Koschmieder; as in RESIDE / ITS-OTS)::

    I = J * t + A * (1 - t),    t = exp(-beta * d)

``J`` is the clean RGB image, ``d`` a smooth synthetic depth map in [0.1, 1] (:func:`bench.synth.depth_map`:
a tilted ramp, far at the top, plus low-frequency noise), ``beta`` the scattering coefficient and ``A``
the airlight, slightly tinted per channel. ``beta``, ``A``, the tint and the depth map are drawn per image.

Parameters (ranges ``LO,HI``, drawn per image):
- ``beta`` in (0, 10], default 0.5,1.5: scattering coefficient per unit of depth (higher: denser haze;
  the farthest point keeps ``exp(-beta)`` of its radiance).
- ``airlight`` in [0, 1], default 0.7,0.95: brightness of the atmospheric light ``A``.
- ``tint`` in [0, 0.2], default 0.03: maximal per-channel relative deviation of ``A`` from grey.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.api import Task
from bench.data import HORIZONTAL_FLIPS
from bench.params import param
from bench.synth import check_range, depth_map, draw


@dataclass(frozen=True)
class DehazeParams:
    beta: tuple[float, ...] = param((0.5, 1.5), "scattering coefficient per unit depth, range in (0, 10]")
    airlight: tuple[float, ...] = param((0.7, 0.95), "airlight brightness range LO,HI in [0, 1]")
    tint: float = param(0.03, "max per-channel relative deviation of the airlight from grey, in [0, 0.2]")

    def __post_init__(self) -> None:
        check_range("beta", self.beta, 0.0, 10.0, open_lo=True)
        check_range("airlight", self.airlight, 0.0, 1.0)
        if not 0.0 <= self.tint <= 0.2:
            raise ValueError(f"parameter 'tint' must lie in [0, 0.2], got {self.tint}")


class Dehaze(Task):
    """Synthetic haze by the atmospheric scattering model over a synthetic depth map."""

    Params = DehazeParams
    # Training augmentation: mirror images only (the scene gets farther (hazier) towards the top).
    augment_transforms = HORIZONTAL_FLIPS

    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        beta = draw(rng, p.beta)
        a = draw(rng, p.airlight) * (1.0 + p.tint * (2.0 * rng.random(3) - 1.0))
        d = depth_map(clean.shape[0], clean.shape[1], rng)
        t = np.exp(-beta * d)[..., None]
        hazy = clean * t + np.clip(a, 0.0, 1.0).astype(np.float32) * (1.0 - t)
        return np.clip(hazy, 0.0, 1.0).astype(np.float32)
