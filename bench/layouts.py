"""Datasets as they lie on disk: the standard paired layouts of the tasks' benchmark sets.

Every task reads real pairs instead of its bundled photographs when given ``--data DIR`` (a dataset in one
of the layouts below, recognised from the tree or named with ``--layout NAME``) or the general form
``--input DIR --target DIR``. It then synthesises nothing: the degraded images are the set's own (except
for HR-only super-resolution sets, whose inputs are made by bicubic downscaling, as papers do).

Layouts (``bench list layouts``):

========  ==========  ==================================================================================
rain100   derain      Rain100L / Rain100H (Yang et al., CVPR 2017, "Deep joint rain detection and
                      removal"): ``rain-N.png`` + ``norain-N.png`` in one folder, or ``rain/`` (``rainy/``)
                      + ``norain/`` folders (same names, or the prefixed ones), or ``rainy/rain-N.png`` +
                      ``norain-N.png`` beside it; under ``train/`` and ``test/`` where present.
rain1400  derain      Rain1400 / Rain12600 (Fu et al., CVPR 2017, "Removing rain from single images via
                      a deep detail network"): ``rainy_image/N_k.jpg`` -> ``ground_truth/N.jpg`` (14 rainy
                      variants per clean image), under ``training/`` and ``testing/``.
lol       lowlight    LOL (Wei et al., BMVC 2018, "Deep Retinex decomposition"): ``our485/{low,high}``
                      (train) and ``eval15/{low,high}`` (test), same names; LOL-v2's
                      ``Train|Test/{Low,Normal}`` (``lowN.png`` -> ``normalN.png``) too.
uieb      underwater  UIEB (Li et al., TIP 2019, "An underwater image enhancement benchmark dataset and
                      beyond"): ``raw-890/`` + ``reference-890/``, same names. It has no official split.
reside    dehaze      RESIDE (Li et al., TIP 2019, "Benchmarking single-image dehazing and beyond"):
                      ``hazy/NNNN_k[_beta].png`` -> ``clear/NNNN.png`` or ``gt/NNNN.png`` (several hazy
                      versions per clean image); ITS / OTS (or ``train/``) train, SOTS (or ``test/``) test.
div2k     sr          DIV2K (Agustsson & Timofte, CVPRW 2017, NTIRE): ``*_HR/NNNN.png`` with
                      ``*_LR_bicubic/X{2,3,4}/NNNNx{2,3,4}.png``; ``DIV2K_train_HR`` (and Flickr2K_HR)
                      train, ``DIV2K_valid_HR`` test. Without an ``_LR_bicubic`` folder the LR is made.
hr_only   sr          Set5 (Bevilacqua et al., BMVC 2012), Set14 (Zeyde et al., 2010), B100 (Martin et
                      al., ICCV 2001), Urban100 (Huang et al., CVPR 2015), Manga109: HR images only (or
                      EDSR's ``Set5/HR`` + ``Set5/LR_bicubic/X2``) as the test set, beside a training set
                      of HR images (``train/`` or ``DIV2K_train_HR/``).
paired    every task  your own pairs: ``input/`` + ``target/`` with the same file names, optionally under
                      ``train/`` and ``test/`` (the folder task's layout; MPRNet's ``Datasets/`` tree too).
========  ==========  ==================================================================================

Recognition: a task tries its own layouts and ``paired``; a layout recognises a tree from its folder names
and a first pair whose partner exists. One recognised layout is used; of several, the only one that
finds both a train and a test part (or a tree without parts); otherwise the error lists them. A tree that
no layout recognises is a one-line error listing the task's layouts and what each expects.

Parts, scenes and pools (the protocol's four disjoint pools, split by source image):

- A set's own split is kept: its test part's pairs are the ``test`` pool, exactly; its train part is split
  into ``owner``, ``attacker`` and ``calib`` by scene. Several test sets in one tree (SOTS indoor and
  outdoor, Set5 and Set14, MPRNet's Rain100L/Rain100H/Test100) need ``--set task.test_set=NAME``, except
  RESIDE, which pairs ITS with SOTS/indoor and OTS with SOTS/outdoor, as its authors do.
- A scene is the clean image a degraded one pairs with, within its part: Rain1400's 14 rainy variants of
  one clean image, RESIDE's hazy versions of one clear image, are one scene and stay in one pool.
  ``--scene-pattern REGEX`` names scenes otherwise (its group ``scene``, else its first group, else the
  whole match, searched in the pair's name: the degraded file's name without extension).
- Train scenes, in natural name order (``2`` before ``10``), are cut into consecutive blocks: ``owner``
  50 %, ``attacker`` 37.5 %, ``calib`` 12.5 % (the folder task's 40/30/10 of the non-test part), each at
  least one scene, ``owner`` taking what rounding leaves. Consecutive blocks keep neighbouring scenes
  (frames, crops of one photograph) together.
- A set with no split of its own (UIEB; the folder task's ``input/`` + ``target/``; a flat folder of HR
  photographs) is cut the folder task's way: ``owner`` 40 %, ``attacker`` 30 %, ``calib`` 10 %, ``test``
  20 % of its scenes in that order (so test is the last fifth by name). UIEB papers hold out 90 of the 890
  images chosen at random and publish no list: give yours with ``--split-file`` to match one.
- A set with a test part and no train part (SOTS alone, Set5 alone, LOL's ``eval15`` alone) is an error
  that names the training set to add: the suite never trains and scores on one set's test images. A data
  folder named like a part (``test``, ``eval15``, ``SOTS``, ``train``) is read as that part alone.
- The profile's ``image_size``, ``variants``, ``calib_pool`` and ``calib_draws`` shape the bundled
  photographs only: a set's pairs are fixed, used at full size, one draw each.
- ``--split-file FILE`` assigns pairs to pools: one ``NAME POOL`` per line (``#`` starts a comment), NAME a
  pair's name or a scene (``PART/NAME`` where names repeat across parts), POOL one of ``train``, ``test``,
  ``owner``, ``attacker``, ``calib``. Unlisted pairs keep their part (a set without parts: ``train``);
  ``train`` scenes are cut into the train pools the file leaves empty (all three if it fills them all).
  Variants of one scene must share a pool.

Pairs must agree in size: the clean image ``scale`` times the degraded one. Two layouts allow documented
slack, as their sets need: ``div2k``/``hr_only`` crop the HR image's right and bottom to a multiple of the
scale (MATLAB's ``modcrop``; DIV2K's x3 LR are floor(HR / 3)), and ``reside`` centre-crops a clean image up
to 32 px larger than its hazy one (SOTS indoor's GT is 640x480 for 620x460 hazy images, cropped the same way
by RESIDE's evaluation). HR-only inputs are the task's own degradation of the (mod-cropped) HR image: for
``sr``, antialiased bicubic, rounded to 8 bits as a saved LR image is.

What is loaded when (memory): naming the data (a task's identity, every cache key) lists the tree and reads
the files' names, sizes and modification times (the data fingerprint). Building the pools (the first
``task.splits()`` of a job) reads each image's header for its size and checks every pair, so a bad pair fails
before any training. Pixels are decoded on the first use of each image and kept, 8-bit as on disk (16-bit
images as float32), for the job's life; an image hands out a float32 copy on each use. A teacher job so
decodes the owner images it samples, an attack the attacker images it queries, scoring the test images; a
pool a job never touches is never decoded. A clean image shared by several variants is held once. Every
clean image is refused above ``max_megapixels`` (each is scored whole).

Identity: a task with data has the data parameters it was given, the layout's name (and the test set
chosen) among its identity's parameters, and a fingerprint of the files (names, sizes, modification
times, and the split file's bytes) beside them, so its results never mix with the bundled data's, and
changing the data recomputes them. Without data, identities are exactly as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench import BenchError
from bench.data import SPLITS, Pool, Splits, stable_seed
from bench.params import build, describe, param

if TYPE_CHECKING:
    from bench.api import Task

#: image files read (any case); other files and hidden files are ignored
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
#: the pools of a set without a split of its own (the folder task's rule; owner takes what rounding leaves)
FRACTIONS = {"owner": 0.4, "attacker": 0.3, "calib": 0.1, "test": 0.2}
#: the pools a set's train part is cut into (FRACTIONS without test, renormalised: exact binary fractions)
TRAIN_FRACTIONS = {"owner": 0.5, "attacker": 0.375, "calib": 0.125}
TRAIN_POOLS = ("owner", "attacker", "calib")
#: what a split file may name
FILE_POOLS = ("train", "test", *TRAIN_POOLS)
#: a clean image may exceed its degraded partner by this much per dimension under ``target_fit="centre"``
CENTRE_SLACK = 32
#: header checks of at least this many images show progress
PROGRESS_AT = 2000


# ------------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class DataParams:
    """The data parameters every task takes (``--data``, ``--layout``, ... or ``--set task.KEY=VALUE``)."""

    data: str = param("", "dataset folder in a standard layout (bench list layouts), read instead of the bundled "
                          "photographs")
    layout: str = param("", "layout of --data (bench list layouts); empty: recognised from the tree")
    input: str = param("", "folder of degraded images paired by file name with --target (the general form)")
    target: str = param("", "folder of clean images paired by file name with --input")
    split_file: str = param("", "text file of NAME POOL lines (POOL: train, test, owner, attacker, calib) "
                                "choosing pools")
    scene_pattern: str = param("", "regular expression on a pair's name: its group 'scene' (or first group, or "
                                   "match) names the scene kept in one pool")
    test_set: str = param("", "the test set to score on where the tree holds several (e.g. Set14, SOTS/outdoor)")
    max_megapixels: float = param(16.0, "largest clean image accepted, in megapixels (every image is scored "
                                        "whole: a model's features of a 36 MP image take gigabytes)")

    def __post_init__(self) -> None:
        if not 0 < self.max_megapixels <= 1000:
            raise ValueError(f"parameter 'max_megapixels' must lie in (0, 1000], got {self.max_megapixels}")
        if self.layout and self.layout not in LAYOUTS:
            raise ValueError(f"parameter 'layout' must be one of {', '.join(LAYOUTS)} (or empty: recognised from "
                             f"the tree), got {self.layout!r}")
        if self.scene_pattern:
            try:
                re.compile(self.scene_pattern)
            except re.error as exc:
                raise ValueError(f"parameter 'scene_pattern' is not a regular expression ({exc})") from None


DATA_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DataParams))
#: the fields that name data (any of them turns the bundled photographs off)
_SOURCES = ("data", "input", "target")


def task_fields(cls: type) -> set[str]:
    """Every parameter name a task class accepts: its own and the data parameters."""
    return {f.name for f in describe(cls.Params)} | set(DATA_FIELDS)


def split_overrides(cls: type, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``overrides`` -> (the task's own, the data parameters): a key the task declares itself stays its own."""
    own_names = {f.name for f in describe(cls.Params)}
    data = {k: v for k, v in overrides.items() if k in DATA_FIELDS and k not in own_names}
    return {k: v for k, v in overrides.items() if k not in data}, data


def attach_data(task: Task, overrides: dict[str, Any]) -> None:
    """Give ``task`` the data that ``overrides`` (data parameters) name; none: it keeps its bundled photos."""
    from bench.api import Task

    params = build(DataParams, overrides, owner=f"task '{task.name}'")
    if not any(getattr(params, k) for k in _SOURCES):
        given = sorted(k for k in overrides if k != "max_megapixels")
        if given:
            raise BenchError(f"task '{task.name}': {given[0]} applies to data read from disk; give the data too "
                             "(--data DIR, or --input DIR --target DIR).")
        return  # the bundled photographs (a task that reads pairs only says so when asked for them)
    if type(task).splits is not Task.splits:
        raise BenchError(f"task '{task.name}' builds its own pools (its class overrides splits()), so it cannot read "
                         "--data; drop --data or use a built-in task.")
    task.source = DataSource(params, task)


# ------------------------------------------------------------------------------------------ images
def read_pixels(path: Path) -> np.ndarray:
    """An image file as (H, W, 3): uint8 as stored for 8-bit files, else float32 in [0, 1] (16-bit, float).

    Grey images are replicated to three channels, alpha is dropped. BenchError naming the file if it
    cannot be used. 8-bit files are decoded by Pillow directly (2-3x faster than through scikit-image's
    plugin lookup, which reads the rest: 16-bit, float).
    """
    from PIL import Image
    from skimage.io import imread

    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "L", "LA"):
                img = np.asarray(im)
            elif im.mode == "P":
                img = np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
            else:
                img = np.asarray(imread(str(path)))
    except Exception as exc:  # any decoder error: corrupt, truncated, not really an image
        raise BenchError(f"cannot read image {path} ({_detail(exc)}); re-save it as PNG or JPEG, or remove it.") \
            from None
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype == np.uint8:
        pass
    elif np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    elif np.issubdtype(img.dtype, np.floating):
        img = np.clip(img.astype(np.float32), 0.0, 1.0)
    else:
        raise BenchError(f"image {path} has unsupported pixel type {img.dtype}; re-save it as 8-bit PNG.")
    if img.ndim == 3 and img.shape[2] in (1, 2):  # grey, grey + alpha
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 1:
        raise BenchError(
            f"image {path} has unsupported shape {img.shape} (expected grey, RGB or RGBA); re-save it as PNG."
        )
    return img[..., :3]


def as_float(img: np.ndarray) -> np.ndarray:
    """:func:`read_pixels`' result as float32 in [0, 1]."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return img.astype(np.float32, copy=False)


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 (H, W, 3) in [0, 1]; BenchError naming the file if it cannot be used."""
    return as_float(read_pixels(path))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as exc:
        raise BenchError(f"cannot read image {path} ({_detail(exc)}); re-save it as PNG or JPEG, or remove it.") \
            from None


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@lru_cache(maxsize=1 << 16)
def natural(text: str) -> tuple[tuple[Any, ...], str]:
    """Sort key that orders digits by value: ``rain-2`` before ``rain-10``."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), text


def _subdirs(folder: Path) -> list[Path]:
    try:
        kids = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    return sorted(kids, key=lambda p: natural(p.name))


def _child(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` (``.``: the folder itself) that is a subfolder of ``folder``, any case."""
    kids = {p.name.lower(): p for p in _subdirs(folder)}
    for name in names:
        if name == ".":
            return folder
        if name.lower() in kids:
            return kids[name.lower()]
    return None


def _image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in natural name order (none if it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if not e.name.startswith(".")
                     and os.path.splitext(e.name)[1].lower() in EXTENSIONS and e.is_file()]
    except OSError:
        return []
    return [folder / n for n in sorted(names, key=natural)]


def list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` in natural name order; BenchError if two share a name."""
    if not os.access(folder, os.R_OK | os.X_OK):
        raise BenchError(f"cannot list {folder}; check the path and its permissions.")
    found = _image_files(folder)
    seen: dict[str, Path] = {}
    for path in found:
        if path.stem in seen:
            raise BenchError(f"{seen[path.stem]} and {path} have the same name; keep only one of them.")
        seen[path.stem] = path
    return found


# ------------------------------------------------------------------------------------------ pairs
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
class _Ctx:
    scale: int
    test_set: str
    split_file: bool = False  # a split file may take train pairs from a tree of test sets
    test_label: str = ""
    test_chosen: bool = False


def _label(root: Path, folder: Path) -> str:
    if folder == root:
        return ""
    try:
        return folder.relative_to(root).as_posix()
    except ValueError:
        return folder.name


# ------------------------------------------------------------------------------------------ layouts
@dataclass(frozen=True, kw_only=True)
class Layout:
    """A dataset layout: what it reads, for which tasks, and how (subclasses: the finding)."""

    name: str
    #: tasks that recognise it from the tree; () = every task
    tasks: tuple[str, ...] = ()
    #: the sets it reads and where they come from
    dataset: str = ""
    #: the tree, in one line (errors and ``bench list layouts``)
    expects: str = ""
    #: what to add when the tree has test pairs only
    train_hint: str = "add the set's training part beside its test part"
    #: how the clean image may exceed ``scale`` x the degraded one: exact, modcrop (SR) or centre (RESIDE)
    target_fit: str = "exact"
    #: names of train and test part folders (any case)
    train: tuple[str, ...] = ("train",)
    test: tuple[str, ...] = ("test",)
    #: of several test sets (labels), the one a train part implies (e.g. RESIDE: ITS -> SOTS/indoor)
    prefer: Callable[[list[str], list[str]], str | None] | None = None

    def plan(self, root: Path, test_set: str = "") -> Plan | None:
        """The parts of ``root`` if it looks like this layout, else None (cheap: names and a first pair);
        ``test_set`` names a test folder the layout would not recognise by its name."""
        raise NotImplementedError

    def pairs_in(self, folder: Path, part: str, where: str, ctx: _Ctx) -> list[Pair]:
        raise NotImplementedError

    def missing(self, root: Path) -> str:
        """The one-line error for a tree this layout does not recognise."""
        return f"{root} does not hold the {self.name} layout ({self.dataset}): expected {self.expects}."

    def find(self, root: Path, ctx: _Ctx) -> list[Pair]:
        plan = self.plan(root, ctx.test_set)
        if plan is None:
            raise BenchError(self.missing(root))
        if plan.single is not None:
            if ctx.test_set:
                raise BenchError(f"--set task.test_set={ctx.test_set}: {root} is one set without test sets (layout "
                                 f"{self.name}); choose its test pairs with --split-file instead.")
            return self.pairs_in(plan.single, "", "", ctx)
        if plan.test and not plan.train and not ctx.split_file:
            raise BenchError(test_only(root, self))
        pairs = []
        for folder in plan.train:
            pairs += self.pairs_in(folder, "train", _label(root, folder), ctx)
        chosen = self.choose_test(root, plan, ctx)
        if chosen is not None:
            pairs += self.pairs_in(chosen, "test", _label(root, chosen), ctx)
        elif ctx.test_set:
            raise BenchError(f"--set task.test_set={ctx.test_set}: {root} has no test set (layout {self.name} "
                             f"expects {self.expects}).")
        return pairs

    def choose_test(self, root: Path, plan: Plan, ctx: _Ctx) -> Path | None:
        if not plan.test:
            return None
        labels = [_label(root, f) or f.name for f in plan.test]
        if ctx.test_set:
            want = ctx.test_set.strip("/").lower()
            hits = [f for f, lab in zip(plan.test, labels) if want in (lab.lower(), f.name.lower())]
            if len(hits) != 1:
                raise BenchError(f"--set task.test_set={ctx.test_set} names no test set of {root} (layout "
                                 f"{self.name}); its test sets: {', '.join(labels)}.")
            chosen, ctx.test_chosen = hits[0], True
        elif len(plan.test) == 1:
            chosen = plan.test[0]
        else:
            pick = self.prefer(labels, [f.name for f in plan.train]) if self.prefer else None
            if pick is None:
                raise BenchError(f"{root} holds several test sets ({', '.join(labels)}; layout {self.name}); choose "
                                 "one with --set task.test_set=NAME.")
            chosen, ctx.test_chosen = plan.test[labels.index(pick)], True
        ctx.test_label = _label(root, chosen) or chosen.name
        return chosen

    def _parts(self, root: Path, holds: Callable[[Path], bool]) -> Plan | None:
        """Train/test part folders of ``root`` (each holding the layout itself, or subsets that do), the root
        as a lone part when its own name is a part's, or the root as one folder without a split."""
        def expand(folder: Path) -> list[Path]:
            return [folder] if holds(folder) else [k for k in _subdirs(folder) if holds(k)]

        train_names = {n.lower() for n in self.train}
        test_names = {n.lower() for n in self.test}
        kids = _subdirs(root)
        train = [f for k in kids if k.name.lower() in train_names for f in expand(k)]
        test = [f for k in kids if k.name.lower() in test_names for f in expand(k)]
        if train or test:
            return Plan(train=train, test=test)
        own = root.name.lower()
        if own in test_names or own in train_names:
            sets = expand(root)
            if sets:
                return Plan(test=sets) if own in test_names else Plan(train=sets)
        if holds(root):
            return Plan(single=root)
        return None


# ------------------------------------------------------------------- folders of degraded and clean images
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
        d, c = _child(part, self.degraded), _child(part, self.clean)
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
            degraded = [p for p in _image_files(dirs[0]) if form.keys(p.stem)]
            if not degraded:
                continue
            if sample:
                clean = {form.clean_key(p.stem) for p in _image_files(dirs[1])}
                if not any(k in clean for p in degraded[:8] for k in form.keys(p.stem)):
                    continue
            return form, dirs[0], dirs[1]
        return None

    def plan(self, root: Path, test_set: str = "") -> Plan | None:
        return self._parts(root, lambda f: self.form_of(f, sample=True) is not None)

    def missing(self, root: Path) -> str:
        for folder in [root, *[k for k in _subdirs(root) if k.name.lower() in {*map(str.lower, self.train),
                                                                              *map(str.lower, self.test)}]]:
            for form in self.forms:
                if "." in form.degraded + form.clean:
                    continue
                d, c = _child(folder, form.degraded), _child(folder, form.clean)
                if (d is None) != (c is None):  # half a form: name the folder that is missing
                    absent = folder / (form.degraded[0] if d is None else form.clean[0])
                    return (f"{absent} is missing: layout {self.name} expects {self.expects} ({self.dataset}); add it "
                            "or name another layout with --layout.")
        return super().missing(root)

    def pairs_in(self, folder: Path, part: str, where: str, ctx: _Ctx) -> list[Pair]:
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


# ------------------------------------------------------------------------------------- super-resolution
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
        return [(m.group("prefix"), d) for d in _subdirs(root) if (m := _HR_DIR.fullmatch(d.name))]

    @staticmethod
    def hr_of(folder: Path) -> tuple[Path, Path | None] | None:
        """(HR folder, LR root or None) of a set folder: ``X_HR`` beside ``X_LR_bicubic``, ``HR/`` beside
        ``LR_bicubic/``, or a folder of images."""
        m = _HR_DIR.fullmatch(folder.name)
        if m:
            return folder, _child(folder.parent, (f"{m.group('prefix')}_LR_bicubic",))
        hr = _child(folder, ("HR",))
        if hr is not None and _has_images(hr):
            return hr, _child(folder, ("LR_bicubic",))
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
        kids = _subdirs(root)
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

    def pairs_in(self, folder: Path, part: str, where: str, ctx: _Ctx) -> list[Pair]:
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
    return bool(_image_files(folder))


def sr_pairs(hr_dir: Path, lr_root: Path | None, scale: int, *, part: str, where: str, layout: Layout) -> list[Pair]:
    """HR images paired with ``lr_root/X{scale}/NAMEx{scale}`` (or, without ``lr_root``, with nothing: the
    LR is made). BenchError where the LR folder lacks the task's scale or a name says another scale."""
    hr = list_images(hr_dir)
    if lr_root is None:
        return [Pair(p.stem, None, p, p.stem, part, where) for p in hr]
    xs = {d.name.upper(): d for d in _subdirs(lr_root) if re.fullmatch(r"X\d+", d.name, re.IGNORECASE)}
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


def _reside_prefer(tests: list[str], trains: list[str]) -> str | None:
    """RESIDE's pairing: ITS (indoor) is scored on SOTS/indoor, OTS (outdoor) on SOTS/outdoor."""
    kinds = {"its": "indoor", "ots": "outdoor"}
    wanted = {kinds[t.lower()] for t in trains if t.lower() in kinds}
    if len(wanted) != 1:
        return None
    kind = wanted.pop()
    hits = [t for t in tests if kind in t.lower().split("/")]
    return hits[0] if len(hits) == 1 else None


#: every layout, by name; a task recognises its own (``tasks``) and ``paired``
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    PairedLayout(
        name="rain100", tasks=("derain",), dataset="Rain100L/H, Yang et al., CVPR 2017",
        expects="[train/ test/] each with rain-N.png + norain-N.png, or rain/ + norain/ folders",
        forms=(Form((".",), (".",), ("rain-{key}",), ("norain-{key}",)),
               Form(("rain", "rainy"), ("norain",), ("rain-{key}", "{key}"), ("norain-{key}", "{key}")),
               Form(("rainy", "rain"), (".",), ("rain-{key}",), ("norain-{key}",))),
        train_hint="add the set's training pairs as DIR/train (Rain100L: RainTrainL, Rain100H: RainTrainH)",
    ),
    PairedLayout(
        name="rain1400", tasks=("derain",), dataset="Rain1400/Rain12600, Fu et al., CVPR 2017",
        expects="training/ + testing/, each rainy_image/N_k.jpg + ground_truth/N.jpg",
        forms=(Form(("rainy_image", "rain", "rainy", "input"), ("ground_truth", "norain", "gt", "target"),
                    ("{key}_{n}",), ("{key}",)),),
        train=("training", "train"), test=("testing", "test"),
        train_hint="add the set's training pairs (Rain12600) as DIR/training",
    ),
    PairedLayout(
        name="lol", tasks=("lowlight",), dataset="LOL, Wei et al., BMVC 2018 (and LOL-v2)",
        expects="our485/ + eval15/, each low/ + high/ with the same names (LOL-v2: Train|Test/Low + Normal)",
        forms=(Form(("low",), ("high",)),
               Form(("low",), ("normal",), ("low{key}",), ("normal{key}",))),
        train=("our485", "train"), test=("eval15", "test"),
        train_hint="add LOL's training pairs as DIR/our485 (low/ + high/)",
    ),
    PairedLayout(
        name="uieb", tasks=("underwater",), dataset="UIEB, Li et al., TIP 2019",
        expects="raw-890/ + reference-890/ with the same names (no official split: the last fifth is test)",
        forms=(Form(("raw-890", "raw"), ("reference-890", "reference")),),
    ),
    PairedLayout(
        name="reside", tasks=("dehaze",), dataset="RESIDE ITS/OTS/SOTS, Li et al., TIP 2019",
        expects="ITS|OTS|train/ + SOTS|test/, each hazy/N_k[_beta].png + clear|gt/N.png",
        forms=(Form(("hazy",), ("clear", "gt"), ("{key}_{any}", "{key}")),),
        train=("train", "its", "ots"), test=("test", "sots", "hsts"), target_fit="centre",
        prefer=_reside_prefer,
        train_hint="add RESIDE's training set beside it: DIR/ITS (indoor) or DIR/OTS (outdoor), each hazy/ + clear/",
    ),
    SRLayout(
        name="div2k", tasks=("sr",), dataset="DIV2K, Agustsson & Timofte, CVPRW 2017", mode="div2k",
        expects="DIV2K_train_HR/ + DIV2K_valid_HR/ (NNNN.png), optional *_LR_bicubic/X{s}/NNNNxs.png",
        train_hint="add DIV2K_train_HR/ (and DIV2K_train_LR_bicubic/) beside it",
    ),
    SRLayout(
        name="hr_only", tasks=("sr",), dataset="Set5/Set14/B100/Urban100/Manga109, HR only", mode="hr_only",
        expects="train/ (or DIV2K_train_HR/) + Set5|Set14|B100|Urban100/ of HR images (LR: bicubic)",
        train_hint="add training HR images beside it as DIR/train/ or DIR/DIV2K_train_HR/ and pass --data DIR",
    ),
    PairedLayout(
        name="paired", dataset="your own pairs",
        expects="input/ + target/ with the same file names, optionally under train/ and test/",
        forms=(Form(("input",), ("target",)),),
        train_hint="add training pairs as DIR/train (input/ + target/)",
    ),
)}


def layouts_for(task: Task) -> list[Layout]:
    """The layouts ``task`` recognises from a tree: its field's and ``paired`` (only ``paired`` for a task
    that reads pairs only, like ``folder``)."""
    own = [] if task.requires_data else [lay for lay in LAYOUTS.values() if task.name in lay.tasks]
    return [*own, LAYOUTS["paired"]]


def in_all_tasks(task: Task) -> bool:
    """Whether ``--tasks all`` with ``--data`` runs ``task``: where the data is in a layout of the task's own
    field (``paired`` for a task that reads pairs only, like ``folder``), not every task on plain pairs."""
    source = task.data_source()
    if source is None:
        return True
    own = [lay.name for lay in layouts_for(task) if task.requires_data or lay.name != "paired"]
    return source.layout.name in own


def describe_layouts() -> list[str]:
    """``bench list layouts``."""
    from tabulate import tabulate

    rows = [(lay.name, ", ".join(lay.tasks) or "every task", lay.dataset, lay.expects) for lay in LAYOUTS.values()]
    table = tabulate(rows, tablefmt="plain")
    return ["layouts:  (--data DIR reads them; --layout NAME names one, else it is recognised from the tree)",
            *("  " + line for line in table.splitlines()), ""]


def describe_data_params() -> list[str]:
    """The data parameters, for ``bench list tasks``."""
    from tabulate import tabulate

    from bench.params import type_name

    rows = [(f.name, type_name(f.type), repr(f.default), f.doc) for f in describe(DataParams)]
    return ["  data parameters of every task (--data DIR and friends; bench list layouts):",
            *("      " + line for line in tabulate(rows, tablefmt="plain").splitlines())]


# ------------------------------------------------------------------------------------------ splitting
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


def read_split_file(path: Path) -> list[tuple[int, str, str]]:
    """(line number, name, pool) of each entry of a split file (``NAME POOL`` lines, ``#`` comments)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read split file {path} ({exc.strerror}); check --split-file.") from None
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f for f in re.split(r"[\s,;]+", line) if f]
        if len(fields) != 2 or fields[1].lower() not in FILE_POOLS:
            raise BenchError(f"split file {path} line {number}: expected 'NAME POOL' with POOL one of "
                             f"{', '.join(FILE_POOLS)}, got {raw.strip()!r}.")
        out.append((number, fields[0], fields[1].lower()))
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


# ------------------------------------------------------------------------------------------ lazy pools
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


# ------------------------------------------------------------------------------------------ the source
@dataclass(frozen=True)
class _Sizes:
    """Where a pair's clean image is cut (top, left, height, width; None: whole), and the input's size."""

    target_box: tuple[int, int, int, int] | None
    input_size: tuple[int, int]  # (width, height)


class DataSource:
    """One task's dataset on disk: found on first need, checked when its pools are built, decoded per image
    on first use (see the module doc for what is read when)."""

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
        ctx = _Ctx(scale=scale, test_set=p.test_set, split_file=bool(p.split_file))
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
        """What names the data among the task's identity parameters (labels results in reports)."""
        found, p = self.found(), self.params
        out: dict[str, Any] = {"data": p.data} if p.data else {}
        out["layout"] = found.layout.name
        for key in ("input", "target", "split_file", "scene_pattern"):
            if getattr(p, key):
                out[key] = getattr(p, key)
        if p.test_set or found.test_chosen:
            out["test_set"] = found.test_label
        return out

    def fingerprint(self) -> str:
        """A hash of the pairs' files (paths relative to the data folder, sizes, modification times) and of
        the split file's bytes."""
        if self._fingerprint is None:
            found = self.found()
            base = Path(self.params.data).expanduser() if self.params.data else None
            h = hashlib.blake2b(digest_size=16)
            h.update(found.layout.name.encode())
            seen: dict[Path, bytes] = {}
            for pair in found.pairs:
                for path in (pair.input, pair.target):
                    if path is None:
                        h.update(b"-\x1e")
                        continue
                    if path not in seen:
                        st = path.stat()
                        rel = path.relative_to(base).as_posix() if base else f"{path.parent.name}/{path.name}"
                        seen[path] = f"{rel}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1e".encode()
                    h.update(seen[path])
            if self.params.split_file:
                try:
                    h.update(Path(self.params.split_file).expanduser().read_bytes())
                except OSError as exc:
                    raise BenchError(f"cannot read split file {self.params.split_file} ({exc.strerror}); check "
                                     "--split-file.") from None
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # -------------------------------------------------------------------------------- the pools
    def splits(self) -> Splits:
        """The four pools, checked (every pair's sizes, from the image headers) and lazily decoded."""
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
        device = torch.device(self.task.device)
        out = {}
        for name in SPLITS:
            members = pools[name]
            deg = ImageList([self._input_loader(p, sizes[id(p)]) for p in members], device)
            cln = ImageList([self._target_loader(p, sizes[id(p)]) for p in members], device)
            out[name] = LazyPool(name, [p.source for p in members], self.task.scale,
                                 tuple(self.task.augment_transforms), deg, cln)
        return Splits(**out)

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
