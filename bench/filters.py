"""Image filters shared by plugins (one Gaussian blur for the whole suite)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pad_reflect(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad the last two dims by ``r``: reflected, or replicated where the image is too small to reflect."""
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    return F.pad(x, (r, r, r, r), mode=mode)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N, C, H, W) batch; kernel radius ceil(3 sigma), borders reflected."""
    r = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = pad_reflect(x, r)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
