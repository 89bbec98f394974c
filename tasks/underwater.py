"""Underwater enhancement (``underwater``).

Degradation model: the simplified underwater image formation model (Jaffe-McGlamery, as used by
UWCNN / Akkaynak & Treibitz with a single attenuation coefficient per channel)::

    I_c = J_c * t_c + B_c * (1 - t_c),    t_c = exp(-beta_c * d)

``J`` is the clean RGB image, ``d`` a smooth synthetic depth map in [0.1, 1] (:func:`bench.synth.depth_map`),
``beta_c`` the wavelength-dependent attenuation (red attenuates most, then green, then blue: the
defaults' ranges are ordered that way) and ``B_c`` the backscatter (veiling light) colour, bluish to
greenish. All coefficients and the depth map are drawn per image.

Parameters (ranges ``LO,HI`` in units of the depth map's far distance, drawn per image):
- ``beta_r`` in [0, 10], default 1.0,2.5: red attenuation.
- ``beta_g`` in [0, 10], default 0.3,0.8: green attenuation.
- ``beta_b`` in [0, 10], default 0.15,0.5: blue attenuation.
- ``backscatter_r`` in [0, 1], default 0.0,0.15: red component of the backscatter ``B``.
- ``backscatter_g`` in [0, 1], default 0.35,0.65: green component of ``B``.
- ``backscatter_b`` in [0, 1], default 0.45,0.75: blue component of ``B``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.api import Task
from bench.data import HORIZONTAL_FLIPS
from bench.params import param
from bench.synth import check_range, depth_map, draw


@dataclass(frozen=True)
class UnderwaterParams:
    beta_r: tuple[float, ...] = param((1.0, 2.5), "red attenuation range LO,HI in [0, 10], drawn per image")
    beta_g: tuple[float, ...] = param((0.3, 0.8), "green attenuation range LO,HI in [0, 10], drawn per image")
    beta_b: tuple[float, ...] = param((0.15, 0.5), "blue attenuation range LO,HI in [0, 10], drawn per image")
    backscatter_r: tuple[float, ...] = param((0.0, 0.15), "red backscatter range LO,HI in [0, 1]")
    backscatter_g: tuple[float, ...] = param((0.35, 0.65), "green backscatter range LO,HI in [0, 1]")
    backscatter_b: tuple[float, ...] = param((0.45, 0.75), "blue backscatter range LO,HI in [0, 1]")

    def __post_init__(self) -> None:
        for c in "rgb":
            check_range(f"beta_{c}", getattr(self, f"beta_{c}"), 0.0, 10.0)
            check_range(f"backscatter_{c}", getattr(self, f"backscatter_{c}"), 0.0, 1.0)


class Underwater(Task):
    """Wavelength-dependent attenuation plus blue-green backscatter over a synthetic depth map."""

    Params = UnderwaterParams
    # Training augmentation: mirror images only (the scene gets farther (bluer) towards the top).
    augment_transforms = HORIZONTAL_FLIPS

    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        beta = np.array([draw(rng, p.beta_r), draw(rng, p.beta_g), draw(rng, p.beta_b)], np.float32)
        back = np.array(
            [draw(rng, p.backscatter_r), draw(rng, p.backscatter_g), draw(rng, p.backscatter_b)], np.float32
        )
        d = depth_map(clean.shape[0], clean.shape[1], rng)
        t = np.exp(-d[..., None] * beta)
        out = clean * t + back * (1.0 - t)
        return np.clip(out, 0.0, 1.0).astype(np.float32)
