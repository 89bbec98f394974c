"""Layouts of degraded and clean images in two folders (or one), paired by file name through templates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from bench import BenchError
from bench.layouts.base import Layout
from bench.layouts.images import child_folder, image_files, list_images, natural, subdirs
from bench.layouts.pairs import FindContext, Pair, Plan

_PLACEHOLDERS = {"key": r"(?P<key>.+?)", "n": r"\d+", "any": r".+"}


@lru_cache(maxsize=256)
def _template(text: str) -> re.Pattern[str]:
    """``rain-{key}`` -> a regex matching a whole file stem; ``{key}`` names the clean image, ``{n}`` a
    number, ``{any}`` anything (non-empty)."""
    out = []
    for piece in re.split(r"(\{\w+\})", text):
        out.append(_PLACEHOLDERS[piece[1:-1]] if piece[1:-1] in _PLACEHOLDERS and piece.startswith("{")
                   else re.escape(piece))
    return re.compile("".join(out), re.IGNORECASE)


@dataclass(frozen=True)
class Form:
    """One way a part holds its pairs: a folder of degraded images, a folder of clean ones (``.``: the part
    itself), and how their file names (without extension) relate, as templates: ``{key}`` is shared by a
    degraded image and its clean partner, ``{n}`` a number, ``{any}`` anything. The first degraded template
    whose key has a clean partner wins."""

    degraded: tuple[str, ...]
    clean: tuple[str, ...]
    degraded_names: tuple[str, ...] = ("{key}",)
    clean_names: tuple[str, ...] = ("{key}",)

    def keys(self, stem: str) -> list[str]:
        """Keys a degraded file's name can stand for (empty: not a degraded image of this form)."""
        out = []
        for t in self.degraded_names:
            m = _template(t).fullmatch(stem)
            if m:
                out.append(m.group("key"))
        return out

    def clean_key(self, stem: str) -> str | None:
        for t in self.clean_names:
            m = _template(t).fullmatch(stem)
            if m:
                return m.group("key")
        return None

    def folders(self, part: Path) -> tuple[Path, Path] | None:
        d, c = child_folder(part, self.degraded), child_folder(part, self.clean)
        return (d, c) if d is not None and c is not None else None


@dataclass(frozen=True, kw_only=True)
class PairedLayout(Layout):
    """Degraded and clean images in two folders (or one), paired by name; see :class:`Form`."""

    forms: tuple[Form, ...] = ()

    def form_of(self, part: Path, *, sample: bool = False) -> tuple[Form, Path, Path] | None:
        """The first form ``part`` holds: its folders exist and hold a degraded image of the form (with
        ``sample``: one of the first few also has its clean partner)."""
        for form in self.forms:
            dirs = form.folders(part)
            if dirs is None:
                continue
            degraded = [p for p in image_files(dirs[0]) if form.keys(p.stem)]
            if not degraded:
                continue
            if sample:
                clean = {form.clean_key(p.stem) for p in image_files(dirs[1])}
                if not any(k in clean for p in degraded[:8] for k in form.keys(p.stem)):
                    continue
            return form, dirs[0], dirs[1]
        return None

    def plan(self, root: Path, test_set: str = "") -> Plan | None:
        return self._parts(root, lambda f: self.form_of(f, sample=True) is not None)

    def missing(self, root: Path) -> str:
        for folder in [root, *[k for k in subdirs(root) if k.name.lower() in {*map(str.lower, self.train),
                                                                              *map(str.lower, self.test)}]]:
            for form in self.forms:
                if "." in form.degraded + form.clean:
                    continue
                d, c = child_folder(folder, form.degraded), child_folder(folder, form.clean)
                if (d is None) != (c is None):  # half a form: name the folder that is missing
                    absent = folder / (form.degraded[0] if d is None else form.clean[0])
                    return (f"{absent} is missing: layout {self.name} expects {self.expects} ({self.dataset}); add it "
                            "or name another layout with --layout.")
        return super().missing(root)

    def pairs_in(self, folder: Path, part: str, where: str, ctx: FindContext) -> list[Pair]:
        held = self.form_of(folder)
        if held is None:
            empty = " so the test split would be empty" if part == "test" else ""
            raise BenchError(f"{folder} holds no image pairs{empty} (layout {self.name} expects {self.expects}); add "
                             "the pairs or point --data elsewhere.")
        form, ddir, cdir = held
        return pair_folders(ddir, cdir, form, part=part, where=where, layout=self)


def pair_folders(ddir: Path, cdir: Path, form: Form, *, part: str, where: str, layout: Layout) -> list[Pair]:
    """Every degraded image of ``ddir`` with its clean partner in ``cdir``; BenchError for an image without
    one (either way)."""
    clean: dict[str, Path] = {}
    for path in list_images(cdir):
        key = form.clean_key(path.stem)
        if key is None:
            continue
        if key in clean:
            raise BenchError(f"{clean[key]} and {path} are both the clean image of {key!r} (layout {layout.name}); "
                             "keep only one of them.")
        clean[key] = path
    pairs, used = [], set()
    for path in list_images(ddir):
        keys = form.keys(path.stem)
        if not keys:
            continue  # another file (Rain100's rainregion-N.png, a clean image in the same folder)
        key = next((k for k in keys if k in clean), None)
        if key is None:
            want = form.clean_names[0].replace("{key}", keys[0])
            raise BenchError(f"{path} has no partner in {cdir} (expected the clean image {want}.png, .jpg or .jpeg "
                             f"there; layout {layout.name}: {layout.expects}); add it or remove {path.name}.")
        used.add(key)
        pairs.append(Pair(path.stem, path, clean[key], key, part, where))
    unused = sorted(set(clean) - used, key=natural)
    if unused:
        k = unused[0]
        want = form.degraded_names[0].replace("{key}", k).replace("{n}", "1").replace("{any}", "...")
        more = f" ({len(unused) - 1} more unpaired)" if len(unused) > 1 else ""
        raise BenchError(f"{clean[k]} has no partner in {ddir} (expected a degraded image {want}.png, .jpg or .jpeg "
                         f"there; layout {layout.name}){more}; add the degraded image or remove the unpaired file.")
    return pairs
