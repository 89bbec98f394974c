"""Super-resolution (``sr``).

Degradation model: the clean high-resolution image (cropped to a multiple of ``scale`` by the data
loader) is downsampled by ``scale`` with bicubic interpolation and antialiasing (the MATLAB ``imresize``
convention used by restoration papers; ``torch.nn.functional.interpolate(mode="bicubic",
antialias=True)``), then clipped to [0, 1]. No noise, no randomness: the same image always gives the same
input. The input is ``scale`` times smaller than the target.

Metric convention: PSNR/SSIM on the Y channel (ITU-R BT.601) with a border of ``scale`` pixels shaved;
the baseline score is bicubic upsampling of the input.

Parameters:
- ``scale``: the upscaling factor, 2 or 4 (default 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench.api import Task
from bench.params import param


@dataclass(frozen=True)
class SRParams:
    scale: int = param(2, "upscaling factor (the input is this many times smaller): 2 or 4", choices=(2, 4))

    def __post_init__(self) -> None:
        if self.scale not in (2, 4):
            raise ValueError(f"parameter 'scale' must be 2 or 4, got {self.scale!r}")


class SuperResolution(Task):
    """Bicubic (antialiased) x2 / x4 super-resolution, scored on Y."""

    Params = SRParams
    y_channel = True

    @property
    def scale(self) -> int:  # type: ignore[override]
        return int(self.params.scale)

    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.scale
        h, w = clean.shape[:2]
        x = torch.tensor(np.asarray(clean, dtype=np.float32)).permute(2, 0, 1)[None]
        lr = F.interpolate(x, size=(h // s, w // s), mode="bicubic", align_corners=False, antialias=True)
        return lr[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy()
