"""Pairs into the protocol's four pools: a set's own split kept, train scenes cut into consecutive blocks, a
split file's assignments, scenes named by a pattern."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench import BenchError
from bench.data import SPLITS
from bench.layouts.images import natural
from bench.layouts.pairs import Pair

if TYPE_CHECKING:
    from bench.layouts.base import Layout

#: the pools of a set without a split of its own (the folder task's rule; owner takes what rounding leaves)
FRACTIONS = {"owner": 0.4, "attacker": 0.3, "calib": 0.1, "test": 0.2}
#: the pools a set's train part is cut into (FRACTIONS without test, renormalised: exact binary fractions)
TRAIN_FRACTIONS = {"owner": 0.5, "attacker": 0.375, "calib": 0.125}
TRAIN_POOLS = ("owner", "attacker", "calib")
#: what a split file may name
FILE_POOLS = ("train", "test", *TRAIN_POOLS)


def split_sizes(n: int, pools: Sequence[str] = SPLITS) -> dict[str, int]:
    """How many of ``n`` scenes go to each of ``pools`` (each at least one; the first takes the rest)."""
    fractions = FRACTIONS if tuple(pools) == SPLITS else TRAIN_FRACTIONS
    total = sum(fractions[p] for p in pools)
    sizes = {p: max(1, round(fractions[p] / total * n)) for p in pools[1:]}
    return {pools[0]: n - sum(sizes.values()), **sizes}


def split_by_scene(scenes: Sequence[str], pools: Sequence[str], what: str) -> dict[str, list[str]]:
    """Scenes (natural name order) cut into consecutive blocks, one per pool in order, sized by
    :func:`split_sizes`. ``what`` names the scenes in the error when there are too few."""
    ordered = sorted(scenes, key=natural)
    if len(ordered) < len(pools):
        raise BenchError(f"{what} {len(ordered)} scene(s); the {', '.join(pools)} pools need at least {len(pools)}, "
                         "one each: add pairs.")
    sizes = split_sizes(len(ordered), pools)
    out, start = {}, 0
    for p in pools:
        out[p] = ordered[start:start + sizes[p]]
        start += sizes[p]
    return out


#: a split file's line: NAME (in double quotes, ``""`` for a quote, or bare), separators, POOL, a comment
_QUOTED = re.compile(r'"(?P<name>(?:[^"]|"")*)"[\s,;]+(?P<pool>\S+?)[\s,;]*(?:#.*)?')
_BARE = re.compile(rf"(?P<name>.+?)[\s,;]+(?P<pool>{'|'.join(FILE_POOLS)})[\s,;]*(?:#.*)?", re.IGNORECASE)


def read_split_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, name, pool) of each entry of a split file.

    One ``NAME POOL`` entry a line, POOL one of :data:`FILE_POOLS` (any case), NAME a pair's name or a scene
    (``PART/NAME`` where names repeat across parts), separated by spaces, tabs, a comma or a semicolon.
    A line starting with ``#`` is a comment, and so is a ``#`` and what follows it after POOL. POOL is the
    line's last word, so NAME may hold spaces, commas and ``#`` (``my photo #3, test``); a NAME in double
    quotes is taken as written (``"a, b" test``; ``""`` for a quote), as it must be when it ends in a
    separator and a pool's name followed by ``#``.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read split file {path} ({exc.strerror}); check --split-file.") from None
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _QUOTED.fullmatch(line) if line.startswith('"') else _BARE.fullmatch(line)
        pool = m.group("pool").lower() if m else ""
        if m is None or pool not in FILE_POOLS or not m.group("name").strip():
            raise BenchError(f"split file {path} line {number}: expected 'NAME POOL' with POOL one of "
                             f"{', '.join(FILE_POOLS)}, got {line!r}.")
        name = m.group("name").replace('""', '"') if line.startswith('"') else m.group("name").strip()
        out.append((number, name, pool))
    return out


def assign_pools(pairs: list[Pair], layout: Layout, origin: str,
                 entries: Sequence[tuple[int, str, str]] = (), split_path: str = "") -> dict[str, list[Pair]]:
    """The four pools of ``pairs``: the test part (or the split file's test names) as ``test``, the train
    scenes cut by :func:`split_by_scene`; a set without a split of its own cut four ways. BenchError for
    an empty test split, a set without training pairs, or a scene split across pools."""
    want = [p.part for p in pairs]
    if entries:
        index: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            for key in {p.name, p.scene, f"{p.where}/{p.name}", f"{p.where}/{p.scene}"}:
                index.setdefault(key, []).append(i)
        given: dict[int, tuple[str, int]] = {}
        for number, name, pool in entries:
            hits = index.get(name) or index.get(name.strip("/"))
            if not hits:
                raise BenchError(f"split file {split_path} line {number}: no pair or scene named {name!r} in {origin} "
                                 f"(layout {layout.name}); fix the name or remove the line.")
            for i in hits:
                if i in given and given[i][0] != pool:
                    raise BenchError(f"split file {split_path} lines {given[i][1]} and {number} put {pairs[i].name} in "
                                     f"both {given[i][0]} and {pool}; keep one.")
                given[i] = (pool, number)
        for i, (pool, _) in given.items():
            want[i] = pool
    has_split = bool(entries) or any(want)
    scenes: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        scenes.setdefault(p.source, []).append(i)
    scene_pool: dict[str, str] = {}
    for sid, idx in scenes.items():
        first = want[idx[0]] or ("train" if has_split else "")
        other = next((i for i in idx if (want[i] or ("train" if has_split else "")) != first), None)
        if other is not None:
            theirs = want[other] or "train"
            raise BenchError(f"{pairs[idx[0]].name} ({first}) and {pairs[other].name} ({theirs}) are variants of one "
                             f"scene {sid!r} (layout {layout.name}), which must stay in one pool; put them in one pool "
                             "(--split-file) or name scenes otherwise (--scene-pattern).")
        scene_pool[sid] = first
    if not has_split:
        blocks = split_by_scene(list(scenes), SPLITS, f"{origin} has {len(pairs)} image pair(s) in")
    else:
        blocks = {p: [s for s, q in scene_pool.items() if q == p] for p in SPLITS}
        rest = [s for s, q in scene_pool.items() if q == "train"]
        if not blocks["test"]:
            raise BenchError(f"the test split of {origin} is empty (layout {layout.name} expects {layout.expects}); "
                             "add the set's test part, or name test pairs in --split-file.")
        if not rest and not any(blocks[p] for p in TRAIN_POOLS):
            raise BenchError(test_only(origin, layout))
        if rest:
            empty = [p for p in TRAIN_POOLS if not blocks[p]] or list(TRAIN_POOLS)
            for p, part in split_by_scene(rest, empty, f"{origin} has").items():
                blocks[p] = blocks[p] + part
        for p in TRAIN_POOLS:
            if not blocks[p]:
                raise BenchError(f"the {p} pool of {origin} is empty: the split file fills some train pools and leaves "
                                 f"no train pairs for {p}; list pairs as train or as {p}.")
    out = {}
    for p in SPLITS:
        members = sorted(blocks[p], key=natural)
        out[p] = [pairs[i] for s in members for i in sorted(scenes[s], key=lambda i: natural(pairs[i].name))]
    return out


def test_only(origin: Path | str, layout: Layout) -> str:
    """The error for a set with test pairs and no training pairs (never trained and scored on alike)."""
    return (f"{origin} holds test pairs only (layout {layout.name}); the teacher and the attacker need training "
            f"pairs apart from them: {layout.train_hint}.")


def scene_by_pattern(pairs: list[Pair], pattern: str, layout: Layout) -> list[Pair]:
    """Each pair's scene from ``pattern`` searched in its name (group ``scene``, else 1, else the match)."""
    rx = re.compile(pattern)
    out = []
    for p in pairs:
        m = rx.search(p.name)
        if m is None:
            where = p.input or p.target
            raise BenchError(f"{where}: its name {p.name!r} does not match --scene-pattern {pattern!r} (layout "
                             f"{layout.name}); widen the pattern so that every pair's name has a scene.")
        if "scene" in rx.groupindex:
            scene = m.group("scene")
        elif rx.groups:
            scene = m.group(1)
        else:
            scene = m.group(0)
        out.append(dataclasses.replace(p, scene=scene or p.name))
    return out
