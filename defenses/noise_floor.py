"""The noise floor: answers changed by an amount no user could see, to measure the chaos of training.

Not a defense but the yardstick every defense is held against (DESIGN section 2, "The noise floor and
significance"). Training a student is chaotic: two students trained on answers that differ by a hair
(here and there one grey level) end up a few tenths of a dB apart, although neither answer set is
better. The ``none`` row cannot show this, since its student *is* the reference student (the drop is 0
by construction). This row's student is trained on its own, from the teacher's answers plus white
Gaussian noise of standard deviation ``sigma`` before the 8-bit rounding of the service, seeded per
query's content (like ``output_noise``, which it reuses). With the default sigma = 1e-3 (a quarter of a
grey level), roughly one pixel value in five moves by one level; the teacher's cost is far below what a
user could see (a few thousandths of a dB: it is measured and shown in the row). A defense whose student
drop cannot be told from this row's, over paired seeds, did nothing measurable.

Choices: Gaussian, white, independent per pixel and channel; sigma fixed (no strength: it is never
calibrated or swept); a different seed draws a different hair, so its spread across seeds is the spread
of training itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bench.params import param
from defenses.output_noise import OutputNoise


@dataclass(frozen=True)
class Params:
    sigma: float = param(1e-3, "noise standard deviation (image units); keep the teacher cost under 0.01 dB")

    def __post_init__(self) -> None:
        if not 0.0 < self.sigma <= 0.01:
            raise ValueError(f"sigma must be in (0, 0.01] (an invisible change), got {self.sigma}")

    @property
    def distribution(self) -> str:
        return "gaussian"


class NoiseFloor(OutputNoise):
    """Invisible output noise: the row whose student drop is the chaos of training itself."""

    Params: ClassVar[type] = Params
    strength: ClassVar[str | None] = None
    strength_range: ClassVar[tuple[float, float] | None] = None
    version: ClassVar[str] = "1"
