"""Your own paired data (``folder``).

Degradation model: none is synthesised. The pairs are read from a directory::

    DIR/input/NAME.png    the degraded image (what the model gets)
    DIR/target/NAME.png   the clean image (what it should answer), ``scale`` times the input's size

Files are paired by name without extension (``input/a.jpg`` pairs with ``target/a.png``); extensions
.png, .jpg and .jpeg are read (any case), other files and hidden files are ignored. Images become float
RGB in [0, 1]: 8- and 16-bit images are scaled by their full range, grey images are replicated to three
channels, alpha is dropped. Images are used at their full size (the profile's ``image_size`` applies
only to the bundled photographs).

Splits: the pairs, sorted by name, are cut into consecutive blocks: ``owner`` 40 %, ``attacker`` 30 %,
``calib`` 10 %, ``test`` 20 % (each at least one pair, so at least 4 pairs are needed; ``owner`` takes
what rounding leaves). Consecutive blocks keep neighbouring files (often frames or crops of one scene)
in one split. Every input must be at least as large as the profile's training crop (``crop / scale``
pixels), and the attacker's inputs at least as large as its queries (``query_size``).

The task's identity (and so every cache key) includes a fingerprint of the data (names, sizes and
modification times of the paired files): changing the data recomputes teachers and results.

Parameters:
- ``data``: the directory (required; ``--data DIR`` or ``--set task.data=DIR``).
- ``scale`` in [1, 16], default 1: target size / input size (2, 3, 4 ... for super-resolution data).
- ``y_channel``, default false: score PSNR/SSIM on the Y channel (BT.601) instead of RGB.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import BenchError
from bench.api import Task
from bench.data import SPLITS, Pool, Splits, to_tensor
from bench.params import param

EXTENSIONS = (".png", ".jpg", ".jpeg")
#: fraction of the pairs in each split (owner takes what rounding leaves)
FRACTIONS = {"owner": 0.4, "attacker": 0.3, "calib": 0.1, "test": 0.2}


@dataclass(frozen=True)
class FolderParams:
    data: str = param("", "directory holding input/ (degraded) and target/ (clean) images paired by name")
    scale: int = param(1, "target size / input size, in [1, 16] (e.g. 2 or 4 for super-resolution data)")
    y_channel: bool = param(False, "score PSNR/SSIM on the Y channel (BT.601) instead of RGB")
    max_megapixels: float = param(16.0, "largest target image accepted, in megapixels (every image is scored "
                                        "whole: a model's features of a 36 MP image take gigabytes)")

    def __post_init__(self) -> None:
        if not 1 <= self.scale <= 16:
            raise ValueError(f"parameter 'scale' must lie in [1, 16], got {self.scale}")
        if not 0 < self.max_megapixels <= 1000:
            raise ValueError(f"parameter 'max_megapixels' must lie in (0, 1000], got {self.max_megapixels}")


def split_sizes(n: int) -> dict[str, int]:
    """How many of ``n`` sorted pairs go to each split (each at least one; ``owner`` takes the rest)."""
    sizes = {s: max(1, round(FRACTIONS[s] * n)) for s in SPLITS if s != "owner"}
    sizes["owner"] = n - sum(sizes.values())
    return {s: sizes[s] for s in SPLITS}


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 (H, W, 3) in [0, 1]; BenchError naming the file if it cannot be used."""
    from skimage.io import imread

    try:
        img = np.asarray(imread(str(path)))
    except Exception as exc:  # any decoder error: corrupt, truncated, not really an image
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise BenchError(
            f"cannot read image {path} ({detail}); re-save it as PNG or JPEG, or remove it."
        ) from None
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    elif np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float32)
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
    return np.clip(img[..., :3], 0.0, 1.0)


def _size(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


class Folder(Task):
    """Your paired images from DIR/input and DIR/target, split by sorted file name."""

    Params = FolderParams

    def __init__(self, params: Any, profile: Any) -> None:
        super().__init__(params, profile)
        self._pairs: list[tuple[str, Path, Path]] | None = None

    @property
    def scale(self) -> int:  # type: ignore[override]
        return int(self.params.scale)

    @property
    def y_channel(self) -> bool:  # type: ignore[override]
        return bool(self.params.y_channel)

    # ------------------------------------------------------------------------------------ the files
    def root(self) -> Path:
        if not self.params.data:
            raise BenchError(
                "the folder task needs a data directory: pass --data DIR (or --set task.data=DIR), "
                "where DIR holds input/ and target/ subfolders of paired images."
            )
        root = Path(self.params.data).expanduser()
        if not root.exists():
            raise BenchError(f"data directory {root} does not exist; pass --data DIR of an existing one.")
        if not root.is_dir():
            raise BenchError(f"data path {root} is not a directory; pass --data DIR with input/ and target/.")
        return root

    @staticmethod
    def _images(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in EXTENSIONS or not path.is_file():
                continue
            if path.stem in found:
                raise BenchError(
                    f"{found[path.stem]} and {path} have the same name; keep only one of them."
                )
            found[path.stem] = path
        return found

    def pairs(self) -> list[tuple[str, Path, Path]]:
        """(name, input path, target path) for every pair, sorted by name; BenchError if unpaired."""
        if self._pairs is not None:
            return self._pairs
        root = self.root()
        dirs = {}
        for sub in ("input", "target"):
            d = root / sub
            if not d.is_dir():
                raise BenchError(
                    f"{d} is missing: the data directory must hold input/ (degraded) and target/ (clean) "
                    "subfolders with images paired by file name."
                )
            dirs[sub] = self._images(d)
        inputs, targets = dirs["input"], dirs["target"]
        for have, other, other_dir, what in (
            (inputs, targets, "target", "the clean image"),
            (targets, inputs, "input", "the degraded image"),
        ):
            alone = sorted(set(have) - set(other))
            if alone:
                more = f" ({len(alone) - 1} more unpaired)" if len(alone) > 1 else ""
                raise BenchError(
                    f"{have[alone[0]]} has no partner in {root / other_dir} (expected {alone[0]}.png, .jpg "
                    f"or .jpeg there){more}; add {what} or remove the unpaired file."
                )
        need = len(SPLITS)
        if len(inputs) < need:
            raise BenchError(
                f"{root} has {len(inputs)} image pair(s) (PNG/JPEG in input/ and target/); the folder task "
                f"needs at least {need}, one for each of the {', '.join(SPLITS)} splits: add more pairs."
            )
        self._pairs = [(name, inputs[name], targets[name]) for name in sorted(inputs)]
        return self._pairs

    def fingerprint(self) -> str:
        """A hash of the paired files' names, sizes and modification times."""
        h = hashlib.blake2b(digest_size=16)
        for _name, inp, tgt in self.pairs():
            for path in (inp, tgt):
                st = path.stat()
                h.update(f"{path.parent.name}/{path.name}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1e".encode())
        return h.hexdigest()

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        out["data_fingerprint"] = self.fingerprint()
        return out

    # ------------------------------------------------------------------------------------ the pools
    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise BenchError("the folder task reads fixed (input, target) pairs; it synthesises no degradation.")

    def _load_pair(self, inp: Path, tgt: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = read_image(inp), read_image(tgt)
        mp = y.shape[0] * y.shape[1] / 1e6
        if mp > self.params.max_megapixels:
            raise BenchError(f"image {tgt} is {y.shape[1]}x{y.shape[0]} ({mp:.1f} MP), over the folder task's limit "
                             f"of {self.params.max_megapixels:g} MP (each image is scored whole); downscale or "
                             f"crop it, or raise --set task.max_megapixels={mp:.0f}.")
        s = self.scale
        if y.shape[:2] != (x.shape[0] * s, x.shape[1] * s):
            want = f"{x.shape[1] * s}x{x.shape[0] * s}"
            raise BenchError(
                f"{tgt} is {_size(y)} px but {inp} is {_size(x)} px: with scale {s} the target must be "
                f"exactly {want}; fix the pair or set --set task.scale=..."
            )
        in_crop = max(1, self.profile.crop // s)
        if min(x.shape[:2]) < in_crop:
            fit = min(x.shape[:2]) * s
            raise BenchError(
                f"{inp} is {_size(x)} px, smaller than the profile's training crop ({self.profile.crop} "
                f"target px = {in_crop} input px); use larger images or --set profile.crop={fit}"
            )
        q = self.profile.query_size
        if split == "attacker" and min(x.shape[:2]) < q:
            raise BenchError(
                f"{inp} (attacker split) is {_size(x)} px, smaller than the profile's query size ({q} input "
                f"px); use larger images or --set profile.query_size={min(x.shape[:2])}"
            )
        return x, y

    def splits(self) -> Splits:
        if self._splits is None:
            pairs = self.pairs()
            sizes = split_sizes(len(pairs))
            pools, start = {}, 0
            for split in SPLITS:
                chunk = pairs[start:start + sizes[split]]
                start += sizes[split]
                deg, clean, srcs = [], [], []
                for name, inp, tgt in chunk:
                    x, y = self._load_pair(inp, tgt, split)
                    deg.append(to_tensor(x))
                    clean.append(to_tensor(y))
                    srcs.append(name)
                pools[split] = Pool(split, deg, clean, srcs, self.scale)
            self._splits = Splits(**pools).to(self.device)
        return self._splits
