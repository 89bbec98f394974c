"""One task's dataset on disk (:class:`DataSource`): its layout found, its pairs checked, its files fingerprinted,
its pools built and decoded lazily (what is read when: :mod:`bench.layouts`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench import BenchError
from bench.data import SPLITS, Splits, stable_seed
from bench.layouts.base import Layout
from bench.layouts.images import THUMB, as_float, file_digest, image_size, read_pixels, thumbnail
from bench.layouts.known import LAYOUTS, layouts_for
from bench.layouts.paired import Form, pair_folders
from bench.layouts.pairs import FindContext, Found, Pair
from bench.layouts.pools import ImageList, LazyPool
from bench.layouts.splitting import TRAIN_POOLS, assign_pools, read_split_file, scene_by_pattern

if TYPE_CHECKING:
    from bench.api import Task
    from bench.layouts.params import DataParams

#: a clean image may exceed its degraded partner by this much per dimension under ``target_fit="centre"``
CENTRE_SLACK = 32
#: header checks (and content hashes, thumbnails) of at least this many images show progress
PROGRESS_AT = 2000
#: a test image whose grey thumbnail correlates above this with another pool's image is near-identical to it
NEAR_IDENTICAL = 0.98


def _resolved(value: str) -> str:
    """A path parameter as it enters an identity: absolute, resolved, with forward slashes."""
    return Path(value).expanduser().resolve().as_posix()


#: grey thumbnails (normalised) by content digest, for the leakage check: one per image per process
_THUMBS: dict[bytes, np.ndarray] = {}


@dataclass(frozen=True)
class _Sizes:
    """Where a pair's clean image is cut (top, left, height, width; None: whole), and the input's size."""

    target_box: tuple[int, int, int, int] | None
    input_size: tuple[int, int]  # (width, height)


class DataSource:
    """One task's dataset on disk: found on first need, checked when its pools are built, decoded per image
    on first use (see :mod:`bench.layouts` for what is read when)."""

    def __init__(self, params: DataParams, task: Task) -> None:
        self.params = params
        self.task = task
        self._found: Found | None = None
        self._fingerprint: str | None = None
        self._headers: dict[Path, tuple[int, int]] = {}
        self._decoded: dict[tuple[Any, ...], torch.Tensor] = {}

    # -------------------------------------------------------------------------------- where and what
    def _folder(self, value: str, flag: str) -> Path:
        path = Path(value).expanduser()
        if not path.exists():
            raise BenchError(f"{flag} {path} does not exist; pass {flag} DIR of an existing one.")
        if not path.is_dir():
            raise BenchError(f"{flag} {path} is not a directory; pass {flag} DIR (bench list layouts shows what it "
                             "may hold).")
        return path

    def found(self) -> Found:
        """The layout and its pairs (listed once per task instance)."""
        if self._found is None:
            self._found = self._find()
        return self._found

    def _find(self) -> Found:
        p, task = self.params, self.task
        scale = int(task.scale)
        ctx = FindContext(scale=scale, test_set=p.test_set, split_file=bool(p.split_file))
        if p.input or p.target:
            if p.data:
                raise BenchError("give --data DIR (a dataset's tree) or --input DIR --target DIR (two folders of "
                                 "pairs), not both.")
            if not (p.input and p.target):
                raise BenchError("--input and --target go together: the degraded images' folder and the clean "
                                 "images' folder, paired by file name.")
            if p.layout and p.layout != "paired":
                raise BenchError(f"--input/--target are read as layout paired, not {p.layout}; drop --layout or "
                                 "use --data DIR.")
            if p.test_set:
                raise BenchError("--set task.test_set needs a tree with test sets (--data DIR); --input/--target "
                                 "are one set: choose its test pairs with --split-file.")
            ddir, cdir = self._folder(p.input, "--input"), self._folder(p.target, "--target")
            layout = LAYOUTS["paired"]
            pairs = pair_folders(ddir, cdir, Form((".",), (".",)), part="", where="", layout=layout)
            return Found(layout, self._refine(pairs, layout), str(ddir))
        if not p.data:
            raise BenchError(f"the {task.name} task needs a data directory: pass --data DIR (or --set task.data=DIR), "
                             "where DIR holds input/ and target/ subfolders of paired images (or another layout: "
                             "bench list layouts).")
        root = self._folder(p.data, "--data")
        if p.layout:
            layout = LAYOUTS[p.layout]
            if layout.tasks and task.name not in layout.tasks and not task.requires_data:
                raise BenchError(f"layout {layout.name} holds {', '.join(layout.tasks)} data ({layout.dataset}), "
                                 f"not {task.name}'s; use --task {layout.tasks[0]}, or another layout (bench list "
                                 "layouts).")
        else:
            layout = self._recognise(root)
        pairs = layout.find(root, ctx)
        return Found(layout, self._refine(pairs, layout), str(root), ctx.test_label, ctx.test_chosen)

    def _recognise(self, root: Path) -> Layout:
        candidates = layouts_for(self.task)
        test_set = self.params.test_set
        plans = [(lay, plan) for lay in candidates if (plan := lay.plan(root, test_set)) is not None]
        if not plans:
            if len(candidates) == 1:
                raise BenchError(candidates[0].missing(root))
            listed = "; ".join(f"{lay.name} ({lay.expects})" for lay in candidates)
            raise BenchError(f"{root} is in no layout of task {self.task.name} that the suite recognises: {listed}. "
                             "Name one with --layout NAME to see what is missing, or give pairs of your own with "
                             "--input DIR --target DIR (or --task folder --data DIR).")
        complete = [lay for lay, plan in plans if plan.complete]
        if len(plans) == 1:
            return plans[0][0]
        if len(complete) == 1:
            return complete[0]
        listed = "; ".join(f"{lay.name} ({lay.expects})" for lay, _ in plans)
        raise BenchError(f"{root} matches several layouts of task {self.task.name}: {listed}; choose one with "
                         "--layout NAME.")

    def _refine(self, pairs: list[Pair], layout: Layout) -> list[Pair]:
        if self.params.scene_pattern:
            pairs = scene_by_pattern(pairs, self.params.scene_pattern, layout)
        return pairs

    @property
    def layout(self) -> Layout:
        return self.found().layout

    def pairs(self) -> list[Pair]:
        return self.found().pairs

    def pools(self) -> dict[str, list[Pair]]:
        """Each pool's pairs (names only: nothing is decoded)."""
        found = self.found()
        entries: Sequence[tuple[int, str, str]] = ()
        if self.params.split_file:
            entries = read_split_file(Path(self.params.split_file).expanduser())
        return assign_pools(found.pairs, found.layout, found.origin, entries, self.params.split_file)

    # -------------------------------------------------------------------------------- identity
    def identity_params(self) -> dict[str, Any]:
        """What names the data among the task's identity parameters (labels results in reports). Paths are
        absolute and resolved, so that every spelling of one folder (``ds``, ``ds/``, ``./ds``, a link to it)
        names one dataset."""
        found, p = self.found(), self.params
        out: dict[str, Any] = {"data": _resolved(p.data)} if p.data else {}
        out["layout"] = found.layout.name
        for key in ("input", "target", "split_file", "scene_pattern"):
            if getattr(p, key):
                value = getattr(p, key)
                out[key] = value if key == "scene_pattern" else _resolved(value)
        if p.test_set or found.test_chosen:
            out["test_set"] = found.test_label
        if p.allow_leakage:  # scores on images a model trained on: the row and the report's label say so
            out["allow_leakage"] = True
        return out

    def fingerprint(self) -> str:
        """A hash of the pairs' files (paths relative to the data folder, and each file's content: a
        blake2b digest of its bytes, computed once per process for each version of a file) and of the split
        file's bytes."""
        if self._fingerprint is None:
            from bench.progress import bar

            found = self.found()
            base = Path(self.params.data).expanduser() if self.params.data else None
            files = list(dict.fromkeys(path for pair in found.pairs for path in (pair.input, pair.target)
                                       if path is not None))
            named: dict[Path, bytes] = {}
            with bar(total=len(files), desc=f"hashing {found.layout.name} files", show=len(files) >= PROGRESS_AT,
                     unit="file") as progress:
                for path in files:
                    rel = path.relative_to(base).as_posix() if base else f"{path.parent.name}/{path.name}"
                    named[path] = rel.encode() + b"\x1f" + self._digest(path) + b"\x1e"
                    progress.update(1)
            h = hashlib.blake2b(digest_size=16)
            h.update(b"content\x1e" + found.layout.name.encode())
            for pair in found.pairs:
                for path in (pair.input, pair.target):
                    h.update(b"-\x1e" if path is None else named[path])
            if self.params.split_file:
                try:
                    h.update(Path(self.params.split_file).expanduser().read_bytes())
                except OSError as exc:
                    raise BenchError(f"cannot read split file {self.params.split_file} ({exc.strerror}); check "
                                     "--split-file.") from None
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @staticmethod
    def _digest(path: Path) -> bytes:
        try:
            return file_digest(path)
        except OSError as exc:
            raise BenchError(f"cannot read image {path} ({exc.strerror or exc}); check its permissions, or remove "
                             "it.") from None

    # -------------------------------------------------------------------------------- the pools
    def splits(self) -> Splits:
        """The four pools, checked (every pair's sizes, from the image headers; no test image in another pool,
        unless ``allow_leakage``) and lazily decoded."""
        from bench.progress import bar

        pools = self.pools()
        total = sum(len(v) for v in pools.values())
        sizes: dict[int, _Sizes] = {}
        with bar(total=total, desc=f"checking {self.layout.name} pairs", show=total >= PROGRESS_AT,
                 unit="pair") as progress:
            for name in SPLITS:
                for pair in pools[name]:
                    sizes[id(pair)] = self._check(pair, name)
                    progress.update(1)
        if not self.params.allow_leakage:
            self._check_leakage(pools)
        device = torch.device(self.task.device)
        out = {}
        for name in SPLITS:
            members = pools[name]
            deg = ImageList([self._input_loader(p, sizes[id(p)]) for p in members], device)
            cln = ImageList([self._target_loader(p, sizes[id(p)]) for p in members], device)
            out[name] = LazyPool(name, [p.source for p in members], self.task.scale,
                                 tuple(self.task.augment_transforms), deg, cln)
        return Splits(**out)

    def _check_leakage(self, pools: dict[str, list[Pair]]) -> None:
        """BenchError naming both files for a test image that another pool holds too: the same file (one
        resolved path), a copy (one content digest), or a near-identical image (the clean images' grey
        thumbnails correlating above ``NEAR_IDENTICAL``; a flat thumbnail is never compared)."""
        hint = ("a model would be scored on an image it trained on or queried; remove one, put both in one pool "
                "(--split-file, --scene-pattern), or allow it with --set task.allow_leakage=true.")
        train = [(pair, name) for name in TRAIN_POOLS for pair in pools[name]]
        by_path: dict[Path, tuple[Path, str]] = {}
        by_content: dict[bytes, tuple[Path, str]] = {}
        for pair, name in train:
            for path in (pair.input, pair.target):
                if path is not None:
                    by_path.setdefault(path.resolve(), (path, name))
                    by_content.setdefault(self._digest(path), (path, name))
        for pair in pools["test"]:
            for path in (pair.input, pair.target):
                if path is None:
                    continue
                if (hit := by_path.get(path.resolve())) is not None:
                    raise BenchError(f"test image {path} and {hit[1]} image {hit[0]} are one file; {hint}")
                if (hit := by_content.get(self._digest(path))) is not None:
                    raise BenchError(f"test image {path} is a copy of {hit[1]} image {hit[0]}; {hint}")
        tests = list(dict.fromkeys(p.target for p in pools["test"]))
        others = list(dict.fromkeys((p.target, name) for p, name in train))
        theirs = list(dict.fromkeys(path for path, _ in others))
        ours, mine = self._thumbs(tests), dict(zip(theirs, self._thumbs(theirs)))
        other_thumbs = np.stack([mine[path] for path, _ in others]) if others else np.zeros((0, THUMB * THUMB))
        for start in range(0, len(tests), 256):
            corr = ours[start:start + 256] @ other_thumbs.T
            if corr.size and corr.max() > NEAR_IDENTICAL:
                i, j = np.unravel_index(int(np.argmax(corr)), corr.shape)
                path, name = others[j]
                raise BenchError(f"test image {tests[start + i]} is near-identical to {name} image {path} "
                                 f"(their {THUMB}x{THUMB} grey thumbnails correlate {corr[i, j]:.3f}); {hint}")

    def _thumbs(self, paths: list[Path]) -> np.ndarray:
        """Each image's grey thumbnail, zero-mean and unit-norm (zero where flat), one row per path; held
        per process by content digest."""
        from bench.progress import bar

        rows = np.zeros((len(paths), THUMB * THUMB), dtype=np.float32)
        with bar(total=len(paths), desc="comparing test images", show=len(paths) >= PROGRESS_AT,
                 unit="image") as progress:
            for i, path in enumerate(paths):
                key = self._digest(path)
                row = _THUMBS.get(key)
                if row is None:
                    t = thumbnail(path).astype(np.float64)
                    t -= t.mean()
                    norm = float(np.linalg.norm(t))
                    row = _THUMBS[key] = (t / norm if norm > 1e-3 else np.zeros_like(t)).astype(np.float32)
                rows[i] = row
                progress.update(1)
        return rows

    def _size(self, path: Path) -> tuple[int, int]:
        if path not in self._headers:
            self._headers[path] = image_size(path)
        return self._headers[path]

    def _check(self, pair: Pair, pool: str) -> _Sizes:
        """The pair's crop boxes; BenchError for a pair that does not fit the layout, the scale, the size
        limit or the profile's crops."""
        task, profile, layout = self.task, self.task.profile, self.layout
        s = int(task.scale)
        tw, th = self._size(pair.target)
        mp = tw * th / 1e6
        limit = self.params.max_megapixels
        if mp > limit:
            raise BenchError(f"image {pair.target} is {tw}x{th} ({mp:.1f} MP), over the {task.name} task's limit of "
                             f"{limit:g} MP (each image is scored whole); downscale or crop it, or raise --set "
                             f"task.max_megapixels={math.ceil(mp)}.")
        shown = pair.input or pair.target
        if pair.input is None and task.requires_data:
            raise BenchError(f"layout {layout.name} makes {pair.target}'s input by the task's degradation, and the "
                             f"{task.name} task has none; use --task sr (or give LR images: {layout.expects}).")
        if pair.input is None:
            iw, ih = tw // s, th // s
            if min(iw, ih) < 1:
                raise BenchError(f"{pair.target} is {tw}x{th} px, too small for scale {s} (layout {layout.name}).")
            target_box = None if (iw * s, ih * s) == (tw, th) else (0, 0, ih * s, iw * s)
        else:
            iw, ih = self._size(pair.input)
            dw, dh = tw - iw * s, th - ih * s
            if dw == 0 and dh == 0:
                target_box = None
            elif layout.target_fit == "modcrop" and 0 <= dw < s and 0 <= dh < s:
                target_box = (0, 0, ih * s, iw * s)
            elif layout.target_fit == "centre" and 0 <= dw <= CENTRE_SLACK and 0 <= dh <= CENTRE_SLACK:
                target_box = (dh // 2, dw // 2, ih * s, iw * s)
            else:
                slack = {"modcrop": f" (up to {s - 1} px more, cropped)",
                         "centre": f" (up to {CENTRE_SLACK} px more, centre-cropped)"}.get(layout.target_fit, "")
                raise BenchError(f"{pair.target} is {tw}x{th} px but {pair.input} is {iw}x{ih} px: with scale {s} "
                                 f"the clean image must be {iw * s}x{ih * s}{slack} (layout {layout.name}); fix the "
                                 "pair or set --set task.scale=...")
        if pool in ("owner", "attacker"):
            in_crop = max(1, profile.crop // s)
            if min(iw, ih) < in_crop:
                raise BenchError(f"{shown} is {iw}x{ih} px (input), smaller than the profile's training crop "
                                 f"({profile.crop} target px = {in_crop} input px); use larger images or --set "
                                 f"profile.crop={min(iw, ih) * s}")
        if pool == "attacker":
            q = max(1, profile.query_size // s)
            if min(iw, ih) < q:
                raise BenchError(f"{shown} (attacker split) is {iw}x{ih} px (input), smaller than the profile's query "
                                 f"size ({profile.query_size} target px = {q} input px); use larger images or --set "
                                 f"profile.query_size={min(iw, ih) * s}")
        return _Sizes(target_box, (iw, ih))

    def _decode(self, path: Path, box: tuple[int, int, int, int] | None, device: torch.device) -> torch.Tensor:
        """The image at ``path`` (cut to ``box``) as a (3, H, W) tensor on ``device``, held once per source."""
        key = (path, box, str(device))
        held = self._decoded.get(key)
        if held is None:
            img = read_pixels(path)
            w, h = self._size(path)
            if img.shape[:2] != (h, w):
                raise BenchError(f"{path} decodes to {img.shape[1]}x{img.shape[0]} px but its header says {w}x{h}; "
                                 "re-save it as PNG.")
            if box is not None:
                top, left, bh, bw = box
                img = img[top:top + bh, left:left + bw]
            held = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(device)
            self._decoded[key] = held
        return held

    def _target_loader(self, pair: Pair, sizes: _Sizes) -> Callable[[torch.device], torch.Tensor]:
        return lambda device: self._decode(pair.target, sizes.target_box, device)

    def _input_loader(self, pair: Pair, sizes: _Sizes) -> Callable[[torch.device], torch.Tensor]:
        if pair.input is not None:
            path = pair.input
            return lambda device: self._decode(path, None, device)

        def made(device: torch.device) -> torch.Tensor:
            key = ("made", pair.target, sizes.target_box, str(device))
            held = self._decoded.get(key)
            if held is None:
                hr = read_pixels(pair.target)
                if sizes.target_box is not None:
                    top, left, bh, bw = sizes.target_box
                    hr = hr[top:top + bh, left:left + bw]
                with torch.device("cpu"):  # degradations run on numpy and CPU tensors
                    rng = np.random.default_rng(stable_seed("layout-input", pair.source))
                    lr = np.asarray(self.task.degrade(as_float(hr), rng), dtype=np.float32)
                if lr.shape[:2] != (sizes.input_size[1], sizes.input_size[0]):
                    raise BenchError(f"task {self.task.name}'s degradation made a {lr.shape[1]}x{lr.shape[0]} px input "
                                     f"of {pair.target}; expected {sizes.input_size[0]}x{sizes.input_size[1]}.")
                lr8 = np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)  # saved as an 8-bit LR image is
                held = torch.from_numpy(np.ascontiguousarray(lr8.transpose(2, 0, 1))).to(device)
                self._decoded[key] = held
            return held

        return made
