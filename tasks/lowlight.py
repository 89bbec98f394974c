"""Low-light enhancement (``lowlight``).

Degradation model, per image (every range drawn uniformly per image from the task's generator)::

    dark  = exposure * J ** gamma                        # under-exposure and a darkening tone curve
    I     = Poisson(photons * dark) / photons + N(0, read_noise^2)   # shot noise + read noise
    I     = clip(I, 0, 1)

``J`` is the clean RGB image in [0, 1]. Shot noise is signal dependent (its variance is ``dark /
photons``), read noise is signal independent; the noise is drawn independently per pixel and channel
(a sensor after demosaicking, before any denoising). The target is the clean, well-exposed image.

Parameters (ranges ``LO,HI``, each drawn per image):
- ``exposure`` in (0, 1], default 0.3,0.6: the linear exposure factor (1 = no darkening).
- ``gamma`` in [1, 5], default 1.2,1.8: the darkening tone curve exponent (1 = linear).
- ``photons`` in [1, 1e6], default 200,1000: photon count that a full-white pixel would collect; lower
  means stronger shot noise.
- ``read_noise`` in [0, 0.2], default 0.002,0.01: standard deviation of the Gaussian read noise (image
  units, [0, 1] scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.api import Task
from bench.params import param
from bench.synth import check_range, draw


@dataclass(frozen=True)
class LowLightParams:
    exposure: tuple[float, ...] = param((0.3, 0.6), "exposure factor range LO,HI in (0, 1], drawn per image")
    gamma: tuple[float, ...] = param((1.2, 1.8), "darkening gamma range LO,HI in [1, 5], drawn per image")
    photons: tuple[float, ...] = param(
        (200.0, 1000.0), "photons at full white, range LO,HI in [1, 1e6] (lower: more shot noise)"
    )
    read_noise: tuple[float, ...] = param((0.002, 0.01), "Gaussian read-noise sigma range LO,HI in [0, 0.2]")

    def __post_init__(self) -> None:
        check_range("exposure", self.exposure, 0.0, 1.0, open_lo=True)
        check_range("gamma", self.gamma, 1.0, 5.0)
        check_range("photons", self.photons, 1.0, 1e6)
        check_range("read_noise", self.read_noise, 0.0, 0.2)


class LowLight(Task):
    """Under-exposure plus gamma darkening with Poisson-Gaussian sensor noise."""

    Params = LowLightParams

    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        exposure = draw(rng, p.exposure)
        gamma = draw(rng, p.gamma)
        photons = draw(rng, p.photons)
        sigma = draw(rng, p.read_noise)
        dark = exposure * np.power(np.clip(clean, 0.0, 1.0, dtype=np.float64), gamma)
        noisy = rng.poisson(photons * dark) / photons + sigma * rng.standard_normal(dark.shape)
        return np.clip(noisy, 0.0, 1.0).astype(np.float32)
