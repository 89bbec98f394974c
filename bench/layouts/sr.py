"""Super-resolution layouts: HR images, with their LR partners where a set ships them (else the LR is made)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench import BenchError
from bench.layouts.base import Layout
from bench.layouts.images import child_folder, image_files, list_images, natural, subdirs
from bench.layouts.pairs import FindContext, Pair, Plan

_HR_DIR = re.compile(r"(?P<prefix>.+)_HR", re.IGNORECASE)
_TEST_WORDS = re.compile(r"(^|[_\-])(valid|val|validation|test|testing)([_\-]|$)", re.IGNORECASE)
_LR_NAME = re.compile(r"(?P<stem>.+?)x(?P<scale>\d+)", re.IGNORECASE)
#: benchmark test sets distributed as HR images only
BENCHMARKS = ("set5", "set14", "b100", "bsd100", "bsds100", "urban100", "manga109", "general100")


@dataclass(frozen=True, kw_only=True)
class SRLayout(Layout):
    """HR images (``*_HR/``, ``HR/`` or a folder of images), with their LR partners where an ``_LR_bicubic``
    (``LR_bicubic``) folder holds them: ``X{s}/NAMEx{s}.png``; else the LR is the task's degradation of the
    mod-cropped HR image. ``div2k`` takes its parts from the ``*_HR`` folders' names (valid/val/test:
    test); ``hr_only`` takes a benchmark folder (Set5, ..., or the folder ``--set task.test_set=NAME``
    names) as test, ``train/`` or a DIV2K-style train ``*_HR`` folder as train, and a lone folder of
    images as a set without a split of its own."""

    mode: str = "div2k"
    target_fit: str = "modcrop"

    @staticmethod
    def hr_dirs(root: Path) -> list[tuple[str, Path]]:
        return [(m.group("prefix"), d) for d in subdirs(root) if (m := _HR_DIR.fullmatch(d.name))]

    @staticmethod
    def hr_of(folder: Path) -> tuple[Path, Path | None] | None:
        """(HR folder, LR root or None) of a set folder: ``X_HR`` beside ``X_LR_bicubic``, ``HR/`` beside
        ``LR_bicubic/``, or a folder of images."""
        m = _HR_DIR.fullmatch(folder.name)
        if m:
            return folder, child_folder(folder.parent, (f"{m.group('prefix')}_LR_bicubic",))
        hr = child_folder(folder, ("HR",))
        if hr is not None and _has_images(hr):
            return hr, child_folder(folder, ("LR_bicubic",))
        return (folder, None) if _has_images(folder) else None

    def plan(self, root: Path, test_set: str = "") -> Plan | None:
        def usable(d: Path) -> bool:
            return self.hr_of(d) is not None

        hr = [(p, d) for p, d in self.hr_dirs(root) if usable(d)]
        hr_train = [d for p, d in hr if not _TEST_WORDS.search(p)]
        if self.mode == "div2k":
            if not hr:
                return None
            return Plan(train=hr_train, test=[d for p, d in hr if _TEST_WORDS.search(p)])
        kids = subdirs(root)
        named = (*BENCHMARKS, test_set.strip("/").lower()) if test_set else BENCHMARKS
        tests = [k for k in kids if k.name.lower() in named and usable(k)]
        trains = [k for k in kids if k.name.lower() == "train" and usable(k)] + hr_train
        if tests:
            return Plan(train=trains, test=tests)
        own = root.name.lower()
        if own in BENCHMARKS and usable(root):
            return Plan(test=[root])
        if own == "train" and usable(root):
            return Plan(train=[root])
        if not hr and _has_images(root):
            return Plan(single=root)
        return None  # HR folders without a benchmark set: div2k's tree

    def pairs_in(self, folder: Path, part: str, where: str, ctx: FindContext) -> list[Pair]:
        held = self.hr_of(folder)
        if held is None:
            raise BenchError(f"{folder} holds no HR images (layout {self.name} expects {self.expects}).")
        hr_dir, lr_root = held
        pairs = sr_pairs(hr_dir, lr_root, ctx.scale, part=part, where=where, layout=self)
        if not pairs:
            empty = " so the test split would be empty" if part == "test" else ""
            raise BenchError(f"{hr_dir} holds no images{empty} (layout {self.name} expects {self.expects}).")
        return pairs


def _has_images(folder: Path) -> bool:
    return bool(image_files(folder))


def sr_pairs(hr_dir: Path, lr_root: Path | None, scale: int, *, part: str, where: str, layout: Layout) -> list[Pair]:
    """HR images paired with ``lr_root/X{scale}/NAMEx{scale}`` (or, without ``lr_root``, with nothing: the
    LR is made). BenchError where the LR folder lacks the task's scale or a name says another scale."""
    hr = list_images(hr_dir)
    if lr_root is None:
        return [Pair(p.stem, None, p, p.stem, part, where) for p in hr]
    xs = {d.name.upper(): d for d in subdirs(lr_root) if re.fullmatch(r"X\d+", d.name, re.IGNORECASE)}
    want = f"X{scale}"
    if want not in xs:
        have = ", ".join(sorted(xs, key=natural)) or "no X2/X3/X4 folder"
        raise BenchError(f"{lr_root} has {have} but the task's scale is {scale} (layout {layout.name} expects "
                         f"{lr_root.name}/{want}/NAMEx{scale}.png); set --set task.scale=... to a scale it holds, or "
                         f"add {want}.")
    lr: dict[str, Path] = {}
    for path in list_images(xs[want]):
        m = _LR_NAME.fullmatch(path.stem)
        if m is None:
            raise BenchError(f"{path} is not named NAMEx{scale} (layout {layout.name} expects {xs[want].name}/"
                             f"NAMEx{scale}.png beside the HR image NAME.png); rename it.")
        if int(m.group("scale")) != scale:
            raise BenchError(f"{path} is named for scale x{m.group('scale')} but lies in {xs[want].name}, read for the "
                             f"task's scale {scale} (layout {layout.name}: {xs[want].name}/NAMEx{scale}.png); move it "
                             "to its scale's folder.")
        lr[m.group("stem")] = path
    pairs = []
    for path in hr:
        if path.stem not in lr:
            raise BenchError(f"{path} has no partner in {xs[want]} (expected {path.stem}x{scale}.png there; layout "
                             f"{layout.name}); add it or remove the HR image.")
        pairs.append(Pair(lr[path.stem].stem, lr.pop(path.stem), path, path.stem, part, where))
    if lr:
        extra = lr[min(lr, key=natural)]
        raise BenchError(f"{extra} has no partner in {hr_dir} (layout {layout.name}); add the HR image or remove it.")
    return pairs
