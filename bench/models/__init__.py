"""Reference teacher and student architectures: residual CNNs sized by the profile.

One class serves every task: ``head`` (3 -> C), ``body`` (residual blocks, named ``body.0`` ...,
whose outputs are the features a served model exposes), ``tail`` (C -> 3 * scale^2, then sub-pixel
upsampling for SR). The network predicts a residual over its input (over the bicubic upsampled input
for SR), so it starts at the identity / bicubic baseline and only has to learn the correction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class RestorationCNN(nn.Module):
    def __init__(self, channels: int, blocks: int, scale: int = 1) -> None:
        super().__init__()
        self.scale = int(scale)
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.tail = nn.Conv2d(channels, 3 * self.scale**2, 3, padding=1)
        # A small last layer starts the model near its skip path (identity or bicubic).
        with torch.no_grad():
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        f = self.body(f) + f
        out = self.tail(f)
        if self.scale > 1:
            out = F.pixel_shuffle(out, self.scale)
            skip = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        else:
            skip = x
        return out + skip


def body_layers(model: nn.Module) -> list[str]:
    """Names of the model's main feature blocks, in order: the ones it declares in a ``feature_layers``
    attribute (any model: a sequence of module names), else the body blocks (``body.0``, ``body.1``,
    ...) of a reference model; empty if neither."""
    declared = getattr(model, "feature_layers", None)
    if declared is not None and not callable(declared):
        if isinstance(declared, str) or not all(isinstance(n, str) and n for n in declared):
            raise BenchError(f"the model's feature_layers must be a sequence of module names, got {declared!r}.")
        return list(declared)
    names = [n for n, _ in model.named_modules()
             if n.startswith("body.") and n.count(".") == 1 and n.split(".")[1].isdigit()]
    return sorted(names, key=lambda n: int(n.split(".")[1]))


def middle_layers(model: nn.Module) -> list[str]:
    """The middle feature block(s) of :func:`body_layers`: one for an odd count, the central two for an
    even count."""
    names = body_layers(model)
    if not names:
        return []
    n = len(names)
    lo, hi = (n - 1) // 2, n // 2
    return names[lo:hi + 1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
