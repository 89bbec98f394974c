"""Image files on disk: a folder's images in natural name order, their sizes from the headers, their pixels."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bench import BenchError

#: image files read (any case); other files and hidden files are ignored
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


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


def subdirs(folder: Path) -> list[Path]:
    try:
        kids = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    return sorted(kids, key=lambda p: natural(p.name))


def child_folder(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` (``.``: the folder itself) that is a subfolder of ``folder``, any case."""
    kids = {p.name.lower(): p for p in subdirs(folder)}
    for name in names:
        if name == ".":
            return folder
        if name.lower() in kids:
            return kids[name.lower()]
    return None


def image_files(folder: Path) -> list[Path]:
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
    found = image_files(folder)
    seen: dict[str, Path] = {}
    for path in found:
        if path.stem in seen:
            raise BenchError(f"{seen[path.stem]} and {path} have the same name; keep only one of them.")
        seen[path.stem] = path
    return found
