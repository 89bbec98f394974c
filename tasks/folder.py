"""Your own paired data (``folder``).

Degradation model: none is synthesised. The pairs are read from a directory (``--data DIR``)::

    DIR/input/NAME.png    the degraded image (what the model gets)
    DIR/target/NAME.png   the clean image (what it should answer), ``scale`` times the input's size

or from two folders (``--input DIR --target DIR``). Files are paired by name without extension
(``input/a.jpg`` pairs with ``target/a.png``); extensions .png, .jpg, .jpeg and .bmp are read (any case),
other files and hidden files are ignored. Images become float RGB in [0, 1]: 8- and 16-bit images are
scaled by their full range, grey images are replicated to three channels, alpha is dropped. Images are
used at their full size (the profile's ``image_size`` applies only to the bundled photographs).

The reading, checking, splitting and fingerprinting are the shared ones of :mod:`bench.layouts` (layout
``paired``; any other layout can be named with ``--layout NAME``). Splits: ``DIR/train`` and ``DIR/test``
(each with input/ and target/) keep that split; a single input/ + target/ is cut by scene in natural name
order into consecutive blocks: ``owner`` 40 %, ``attacker`` 30 %, ``calib`` 10 %, ``test`` 20 % (each at
least one scene, so at least 4 are needed; ``owner`` takes what rounding leaves). A scene is one pair
unless ``--scene-pattern REGEX`` groups several (frames or crops of one photograph), which then never
straddle two pools; ``--split-file`` chooses pools by name. Every input must be at least as large as the
profile's training crop (``crop / scale`` pixels), and the attacker's inputs at least as large as its
queries (``query_size / scale``).

The task's identity (and so every cache key) includes a fingerprint of the data (names, sizes and
modification times of the paired files): changing the data recomputes teachers and results. Version 2:
scenes in natural name order (``img2`` before ``img10``) and the shared checks.

Parameters (besides the data parameters of every task: ``bench list tasks``):
- ``scale`` in [1, 16], default 1: target size / input size (2, 3, 4 ... for super-resolution data).
- ``y_channel``, default false: score PSNR/SSIM on the Y channel (BT.601) instead of RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bench import BenchError
from bench.api import Task
from bench.params import param


@dataclass(frozen=True)
class FolderParams:
    scale: int = param(1, "target size / input size, in [1, 16] (e.g. 2 or 4 for super-resolution data)")
    y_channel: bool = param(False, "score PSNR/SSIM on the Y channel (BT.601) instead of RGB")

    def __post_init__(self) -> None:
        if not 1 <= self.scale <= 16:
            raise ValueError(f"parameter 'scale' must lie in [1, 16], got {self.scale}")


class Folder(Task):
    """Your paired images: DIR/input + DIR/target (or any layout), split by scene in name order."""

    Params = FolderParams
    version: ClassVar[str] = "2"
    requires_data: ClassVar[bool] = True

    @property
    def scale(self) -> int:  # type: ignore[override]
        return int(self.params.scale)

    @property
    def y_channel(self) -> bool:  # type: ignore[override]
        return bool(self.params.y_channel)

    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise BenchError("the folder task reads fixed (input, target) pairs; it synthesises no degradation.")
