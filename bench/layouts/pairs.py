"""What a layout finds in a tree: its pairs, its train and test folders, the test set it chose."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.layouts.base import Layout


@dataclass(frozen=True)
class Pair:
    """One (degraded, clean) pair as found on disk."""

    #: the degraded file's name without extension (HR-only SR: the HR file's); split files name it
    name: str
    #: the degraded image; None: made from the target by the task's degradation (HR-only SR)
    input: Path | None
    target: Path
    #: pairs of one scene (by default: one clean image) always share a pool
    scene: str
    #: "train", "test", or "" (the set has no split of its own)
    part: str
    #: the part's folder relative to the data folder (``our485``, ``SOTS/indoor``; "" for the folder itself)
    where: str = ""

    @property
    def source(self) -> str:
        """The pool's source id: the scene within its part (files of two parts may share names)."""
        return f"{self.where}/{self.scene}" if self.where else self.scene


@dataclass
class Plan:
    """What a layout found in a tree: its train and test folders, or one folder without a split."""

    train: list[Path] = field(default_factory=list)
    test: list[Path] = field(default_factory=list)
    single: Path | None = None

    @property
    def complete(self) -> bool:
        return self.single is not None or bool(self.train and self.test)


@dataclass
class Found:
    """A layout's pairs of one tree, with the test set it chose."""

    layout: Layout
    pairs: list[Pair]
    origin: str  # the data folder (or the input folder), for messages
    test_label: str = ""
    test_chosen: bool = False  # chosen among several test sets (then part of the identity)


@dataclass
class FindContext:
    """What a layout's finding is told and notes as it goes: the task's scale, the test set asked for,
    whether a split file chooses the pools, and which test folder it took."""

    scale: int
    test_set: str
    split_file: bool = False  # a split file may take train pairs from a tree of test sets
    test_label: str = ""
    test_chosen: bool = False


def part_label(root: Path, folder: Path) -> str:
    """A part folder's name as messages and identities show it: relative to the set's root ("" for the root)."""
    if folder == root:
        return ""
    try:
        return folder.relative_to(root).as_posix()
    except ValueError:
        return folder.name
