"""A tiny restoration model of "your own", outside the suite: a two-level U-Net.

What makes it a realistic stand-in for a user's model (and what the suite has to cope with):
- it normalises its input internally (subtracts a fixed mean held in a buffer) and uses batch norm;
- it downsamples twice by 2, so input sides must be divisible by 4: it says so with ``size_multiple``;
- it names its main feature blocks in ``feature_layers`` (ASVP's default ``layers=middle`` then picks
  the middle ones; any module name works with ``--set defense.layers=...``);
- ``make_teacher(scale=...)`` builds it for any task: a factory taking ``scale`` gets the task's scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyUNet(nn.Module):
    size_multiple = 4
    feature_layers = ("down1", "down2", "up2", "up1")

    def __init__(self, channels: int = 16, scale: int = 1) -> None:
        super().__init__()
        c = channels
        self.scale = scale
        self.register_buffer("mean", torch.tensor([0.45, 0.44, 0.40]).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.down1 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.ReLU())
        self.up2 = nn.Sequential(nn.Conv2d(4 * c, 8 * c, 3, padding=1), nn.PixelShuffle(2))
        self.up1 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
        self.tail = nn.Conv2d(c, 3 * scale * scale, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.head(x - self.mean)
        f1 = self.down1(f0)
        u2 = self.up2(self.down2(f1)) + f1
        u1 = self.up1(u2) + f0
        out = self.tail(u1)
        if self.scale > 1:
            out = F.pixel_shuffle(out, self.scale)
            x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return x + out


def make_teacher(scale: int = 1) -> nn.Module:
    return TinyUNet(16, scale)


def make_student(scale: int = 1) -> nn.Module:
    return TinyUNet(4, scale)
