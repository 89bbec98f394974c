"""Image files on disk: a folder's images in natural name order, their sizes from the headers, their pixels."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bench import BenchError

#: image files read (any case); other files and hidden files are ignored
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


#: EXIF orientation (tag 274) -> (swap height and width first, then flip these axes): Pillow's exif_transpose
_ORIENT: dict[int, tuple[bool, tuple[int, ...]]] = {
    2: (False, (1,)), 3: (False, (0, 1)), 4: (False, (0,)),
    5: (True, ()), 6: (True, (1,)), 7: (True, (0, 1)), 8: (True, (0,)),
}
#: Pillow's decompression-bomb limit is a module global: lifted under this lock for our own opens only
_BOMB_LOCK = threading.Lock()
#: side of the grey thumbnails compared by the leakage check (bench.layouts.source)
THUMB = 16


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """``PIL.Image.open`` without Pillow's decompression-bomb check: the suite's own size limit
    (``task.max_megapixels``, checked from the header before any decoding) speaks instead."""
    from PIL import Image

    with _BOMB_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def _orientation(im: Any) -> int:
    """The header's EXIF (or XMP) orientation, 1 when upright or unreadable. A PNG's counts where its eXIf
    chunk precedes the pixels (read without decoding them), so that header and pixels always agree."""
    from PIL import Image

    try:
        value = int(Image.Image.getexif(im).get(0x0112, 1))  # the base class: PNG's override decodes the pixels
    except Exception:  # a malformed EXIF block: shown upright, as viewers do
        return 1
    return value if value in _ORIENT else 1


def _upright(img: np.ndarray, orientation: int) -> np.ndarray:
    if orientation not in _ORIENT:
        return img
    swap, flips = _ORIENT[orientation]
    if swap:
        img = img.swapaxes(0, 1)
    for axis in flips:
        img = np.flip(img, axis)
    return np.ascontiguousarray(img)


def _with_rawmode(path: Path, rawmode: str, mode: str | None = None) -> np.ndarray:
    """``path`` decoded by Pillow with another raw mode of the same bits per pixel (so PNG's filters
    undo alike), and optionally into another image mode: how 16-bit PNGs' low bytes are read."""
    with _open(path) as im:
        tile = im.tile[0]
        im.tile = [tile._replace(args=rawmode) if hasattr(tile, "_replace") else (*tile[:3], rawmode)]
        if mode is not None:
            im._mode = mode
        im.load()
        return np.asarray(im)


def _png16(im: Any, path: Path) -> np.ndarray | None:
    """A 16-bit colour or grey + alpha PNG at full precision (uint16), which Pillow opens as 8-bit RGB(A);
    None for any other file, or where this Pillow cannot read the low bytes."""
    if im.format != "PNG" or not im.tile:
        return None
    raw = im.tile[0][3]
    raw = raw[0] if isinstance(raw, tuple) else raw
    try:
        if raw in ("RGB;16B", "RGBA;16B"):
            high = np.asarray(im).astype(np.uint16)
            low = _with_rawmode(path, raw[:-1] + "L").astype(np.uint16)  # the little-endian unpacker: low bytes
            return (high << 8) | low
        if raw == "LA;16B":  # grey + alpha: decoded as one big-endian 32-bit integer per pixel
            both = _with_rawmode(path, "I;32B", "I").view(np.uint32)
            return (both >> 16).astype(np.uint16)
    except Exception:  # a Pillow without these unpackers: its 8-bit decode stands
        return None
    return None


def _array(im: Any, path: Path, *, exact: bool = True) -> np.ndarray:
    """An open image's pixels as a viewer shows their colours (not yet turned upright)."""
    from PIL import ImageChops

    if im.mode == "CMYK":
        if "adobe" not in im.info:  # Pillow reads every CMYK JPEG as Adobe's inverted kind; a plain one is not
            im = ImageChops.invert(im)
        return np.asarray(im.convert("RGB"))
    if im.mode in ("RGB", "RGBA", "L", "LA"):
        deep = _png16(im, path) if exact else None
        return np.asarray(im) if deep is None else deep
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im).astype(np.uint16)
    if im.mode == "P":
        return np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    from skimage.io import imread

    return np.asarray(imread(str(path)))


def read_pixels(path: Path) -> np.ndarray:
    """An image file as (H, W, 3), as a viewer shows it: uint8 as stored for 8-bit files, else float32 in
    [0, 1] (16-bit: value / 65535, at full precision; float).

    EXIF orientation is applied (a camera's rotated JPEG comes upright, as :func:`image_size` reports it),
    CMYK JPEGs are converted to RGB (Adobe's inverted ones and plain ones), grey images are replicated to
    three channels, alpha is dropped. BenchError naming the file if it cannot be used. Files are decoded by
    Pillow (2-3x faster than through scikit-image's plugin lookup, which reads the rest: float, 32-bit).
    """
    try:
        with _open(path) as im:
            turn = _orientation(im)
            img = _array(im, path)
    except Exception as exc:  # any decoder error: corrupt, truncated, not really an image
        raise BenchError(f"cannot read image {path} ({_detail(exc)}); re-save it as PNG or JPEG, or remove it.") \
            from None
    return _upright(_three(img, path), turn)


def _three(img: np.ndarray, path: Path) -> np.ndarray:
    """Pixels as (H, W, 3): uint8 kept, other integers and floats as float32 in [0, 1]."""
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
    """(width, height) from the file's header, without decoding its pixels, as :func:`read_pixels` decodes
    them: EXIF-rotated. Pillow's decompression-bomb check is off (the suite's size limit comes first)."""
    try:
        with _open(path) as im:
            w, h = int(im.size[0]), int(im.size[1])
            swap = _ORIENT.get(_orientation(im), (False, ()))[0]
    except Exception as exc:
        raise BenchError(f"cannot read image {path} ({_detail(exc)}); re-save it as PNG or JPEG, or remove it.") \
            from None
    return (h, w) if swap else (w, h)


def thumbnail(path: Path) -> np.ndarray:
    """A ``THUMB`` x ``THUMB`` grey thumbnail of the upright image (float32, flattened), for telling
    near-identical images apart; JPEGs are decoded at a reduced scale (Pillow's draft mode)."""
    from PIL import Image

    try:
        with _open(path) as im:
            turn = _orientation(im)
            if im.format == "JPEG":
                im.draft(None, (4 * THUMB, 4 * THUMB))
            img = _array(im, path, exact=False)
    except Exception as exc:
        raise BenchError(f"cannot read image {path} ({_detail(exc)}); re-save it as PNG or JPEG, or remove it.") \
            from None
    rgb = as_float(_upright(_three(img, path), turn))
    grey = rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    small = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32)).resize((THUMB, THUMB), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel()


def file_digest(path: Path) -> bytes:
    """The blake2b digest of a file's bytes, computed once per process for each version of the file
    (keyed by its resolved path, size, modification and change times and inode)."""
    real = Path(path).resolve()
    st = real.stat()
    key = (real.as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    held = _DIGESTS.get(key)
    if held is None:
        h = hashlib.blake2b(digest_size=16)
        with open(real, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        held = _DIGESTS[key] = h.digest()
    return held


_DIGESTS: dict[tuple[Any, ...], bytes] = {}


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@lru_cache(maxsize=1 << 16)
def natural(text: str) -> tuple[tuple[Any, ...], str]:
    """Sort key that orders digits by value: ``rain-2`` before ``rain-10``."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), text


def _skip(path: Path, exc: OSError) -> None:
    """One warning line per unreadable entry of a data folder (a symbolic link loop, a dangling mount)."""
    if path not in _SKIPPED:
        _SKIPPED.add(path)
        what = "a symbolic link loop" if exc.errno == errno.ELOOP else _detail(exc)
        print(f"warning: skipping {path} ({what}); remove or fix the link.", file=sys.stderr)


_SKIPPED: set[Path] = set()


def _entries(folder: Path) -> list[tuple[os.DirEntry[str], bool, bool]]:
    """The visible entries of ``folder`` with (is a file, is a directory), links followed; entries that
    cannot be followed (a link loop) are skipped with a warning; none if the folder cannot be listed."""
    out = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    out.append((e, e.is_file(), e.is_dir()))
                except OSError as exc:
                    _skip(folder / e.name, exc)
    except OSError:
        return []
    return out


def subdirs(folder: Path) -> list[Path]:
    kids = [folder / e.name for e, _, is_dir in _entries(folder) if is_dir]
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
    """The image files of ``folder`` in natural name order (none if it cannot be listed; a link that cannot
    be followed is skipped with a warning)."""
    names = [e.name for e, is_file, _ in _entries(folder)
             if is_file and os.path.splitext(e.name)[1].lower() in EXTENSIONS]
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
