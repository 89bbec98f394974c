"""Pools of pairs read from disk: their sources known at once, their images decoded on first use and kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from bench.data import Pool


class ImageList(Sequence[torch.Tensor]):
    """The images of one pool side: each decoded on first use and kept (8-bit as on disk), handed out as a
    float32 (3, H, W) tensor in [0, 1] on the pool's device."""

    def __init__(self, loaders: list[Callable[[torch.device], torch.Tensor]], device: torch.device,
                 held: list[torch.Tensor | None] | None = None) -> None:
        self._loaders = loaders
        self.device = device
        self._held: list[torch.Tensor | None] = held if held is not None else [None] * len(loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        t = self._held[index]
        if t is None:
            t = self._held[index] = self._loaders[index](self.device)
        return t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.clone()

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    def __add__(self, other: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(self) + list(other)

    def __radd__(self, other: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(other) + list(self)

    def decoded(self) -> int:
        """How many images are held (decoded) so far."""
        return sum(t is not None for t in self._held)

    def to(self, device: torch.device) -> ImageList:
        held = [None if t is None else t.to(device) for t in self._held]
        return ImageList(self._loaders, device, held)


class LazyPool(Pool):
    """A pool of pairs read from disk: its sources are known at once, its images decode on first use."""

    def __init__(self, name: str, sources: list[str], scale: int, transforms: tuple[int, ...],
                 degraded: ImageList, clean: ImageList) -> None:
        self.name = name
        self.sources = list(sources)
        self.scale = scale
        self.transforms = tuple(transforms)
        self._degraded = degraded
        self._clean = clean

    @property  # type: ignore[override]
    def degraded(self) -> ImageList:
        return self._degraded

    @property  # type: ignore[override]
    def clean(self) -> ImageList:
        return self._clean

    def __len__(self) -> int:
        return len(self.sources)

    def __repr__(self) -> str:
        return f"LazyPool({self.name!r}, {len(self)} pairs, {self._clean.decoded()} decoded)"

    def to(self, device: torch.device | str) -> LazyPool:
        dev = torch.device(device)
        if dev == self._clean.device:
            return self
        return LazyPool(self.name, self.sources, self.scale, self.transforms, self._degraded.to(dev),
                        self._clean.to(dev))
