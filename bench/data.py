"""Image pools and the bundled source images.

A task yields four disjoint pools, split by *source image*, never by crop (DESIGN section 2):
``owner`` (the teacher's training data), ``attacker`` (the attacker's query images), ``calib`` (owner-side,
for calibrating defense strength) and ``test`` (every score). Images are float32 tensors (3, H, W) in
[0, 1]; a pair is (degraded, clean), the degraded image ``scale`` times smaller for super-resolution.

The clean images are scikit-image's bundled photographs (nothing is downloaded). Their assignment to
splits is fixed here, so that every task, profile and seed is scored on the same test photographs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from bench import BenchError

SPLITS = ("owner", "attacker", "calib", "test")

# Photographs only (synthetic test patterns and tiny images are left out); grey ones are replicated to RGB.
SOURCE_SPLITS: dict[str, tuple[str, ...]] = {
    "owner": ("rocket", "retina", "hubble_deep_field", "brick", "moon", "clock", "page"),
    "attacker": ("chelsea", "immunohistochemistry", "grass", "text", "cell"),
    "calib": ("motorcycle_left", "coins"),
    "test": ("astronaut", "coffee", "camera", "gravel"),
}


#: every flip/rotation; HORIZONTAL_FLIPS keeps "up" up (rain falls down, haze thickens towards the horizon)
ALL_TRANSFORMS: tuple[int, ...] = tuple(range(8))
HORIZONTAL_FLIPS: tuple[int, ...] = (0, 4)


@dataclass
class Pool:
    """The (degraded, clean) pairs of one split."""

    name: str
    degraded: list[torch.Tensor]
    clean: list[torch.Tensor]
    sources: list[str] = field(default_factory=list)
    scale: int = 1
    #: the flips/rotations (indices of :func:`dihedral`) that keep an image in the task's distribution
    transforms: tuple[int, ...] = ALL_TRANSFORMS

    def __len__(self) -> int:
        return len(self.clean)

    def to(self, device: torch.device | str) -> Pool:
        """The same pairs on ``device`` (this pool itself where they are there already)."""
        dev = torch.device(device)
        if all(t.device == dev for t in self.degraded + self.clean):
            return self
        return dataclasses.replace(self, degraded=[t.to(dev) for t in self.degraded],
                                   clean=[t.to(dev) for t in self.clean])

    def sample_crops(
        self, n: int, crop: int, generator: torch.Generator, *, augment: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random aligned crops: inputs (n, 3, crop/scale, crop/scale), targets (n, 3, crop, crop).

        ``crop`` is in clean (output) pixels and is rounded down to a multiple of ``scale``. With
        ``augment``, each pair gets one of the 8 flips/rotations, applied to input and target alike.
        """
        return sample_pair_crops(self.degraded, self.clean, n, crop, generator, scale=self.scale,
                                 augment=self.transforms if augment else ())


def sample_pair_crops(
    inputs: list[torch.Tensor] | torch.Tensor,
    targets: list[torch.Tensor] | torch.Tensor,
    n: int,
    crop: int,
    generator: torch.Generator,
    *,
    scale: int = 1,
    augment: bool | Sequence[int] = True,
    setting: str = "profile.crop",
    extras: Sequence[list[torch.Tensor] | torch.Tensor] = (),
) -> Any:
    """Random aligned crops from paired images (the one crop sampler, used by every training loop).

    ``augment``: each crop gets one of these flips/rotations (indices of :func:`dihedral`, drawn
    uniformly), applied to input and target alike; True means all 8, False none.
    ``setting`` names the profile field that chose ``crop``, for the error when an image is too small.
    ``extras`` are further maps aligned with ``inputs`` (e.g. a teacher's features of each input), each
    ``s`` times the input's size (``s`` a whole number, read from the shapes): they are cropped at the
    same place (``s`` times the input crop) and transformed alike, and returned as a third element,
    a list of crop batches in the order given. The random draws do not depend on ``extras``, so the
    crops are the ones drawn without them.
    """
    transforms = tuple(ALL_TRANSFORMS if augment is True else () if augment is False else augment)
    in_crop = max(1, crop // scale)
    out_crop = in_crop * scale
    xs, ys = [], []
    es: list[list[torch.Tensor]] = [[] for _ in extras]
    count = len(inputs)
    # the draws come from the (CPU) generator, whatever the job's device: crops are the same everywhere
    cpu = generator.device
    idx = torch.randint(count, (n,), generator=generator, device=cpu).tolist()
    for i in idx:
        x, y = inputs[i], targets[i]
        h, w = x.shape[-2:]
        if h < in_crop or w < in_crop:
            raise BenchError(
                f"an image of {w * scale}x{h * scale} px is smaller than the {out_crop} px crop; "
                f"lower --set {setting}=... or use larger images."
            )
        ch, cw = in_crop, in_crop
        top = int(torch.randint(h - ch + 1, (1,), generator=generator, device=cpu))
        left = int(torch.randint(w - cw + 1, (1,), generator=generator, device=cpu))
        xc = x[..., top:top + ch, left:left + cw]
        yc = y[..., top * scale:(top + ch) * scale, left * scale:(left + cw) * scale]
        ecs = [_aligned_crop(e[i], x, top, left, ch, cw) for e in extras]
        if transforms:
            k = transforms[int(torch.randint(len(transforms), (1,), generator=generator, device=cpu))]
            xc, yc = dihedral(xc, k), dihedral(yc, k)
            ecs = [dihedral(ec, k) for ec in ecs]
        xs.append(xc)
        ys.append(yc)
        for out, ec in zip(es, ecs):
            out.append(ec)
    if extras:
        return torch.stack(xs), torch.stack(ys), [torch.stack(e) for e in es]
    return torch.stack(xs), torch.stack(ys)


def _aligned_crop(e: torch.Tensor, x: torch.Tensor, top: int, left: int, ch: int, cw: int) -> torch.Tensor:
    """The crop of map ``e`` that covers input crop (top, left, ch, cw) of ``x`` (``e`` a whole multiple
    of ``x`` in size)."""
    (h, w), (eh, ew) = x.shape[-2:], e.shape[-2:]
    s = eh // h
    if s < 1 or eh != s * h or ew != s * w:
        raise BenchError(f"a map of {ew}x{eh} px cannot be cropped in step with its {w}x{h} px input: its "
                         "size must be a whole multiple of the input's (choose other feature layers).")
    return e[..., top * s:(top + ch) * s, left * s:(left + cw) * s]


def dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of the last two dims (k=0 is the identity)."""
    if k >= 4:
        t = t.flip(-1)
    return torch.rot90(t, k % 4, dims=(-2, -1))


def dihedral_inverse(t: torch.Tensor, k: int) -> torch.Tensor:
    t = torch.rot90(t, -(k % 4), dims=(-2, -1))
    return t.flip(-1) if k >= 4 else t


@dataclass
class Splits:
    owner: Pool
    attacker: Pool
    calib: Pool
    test: Pool

    def __getitem__(self, name: str) -> Pool:
        return getattr(self, name)

    def to(self, device: torch.device | str) -> Splits:
        """Every pool on ``device``: done once per job, never per training step."""
        return Splits(**{name: self[name].to(device) for name in SPLITS})

    def check_disjoint(self) -> None:
        """No source image in two pools, except owner and calib: both are the owner's (calib may hold the
        owner's photographs with degradations of their own); test and attacker never share one."""
        seen: dict[str, set[str]] = {}
        for name in SPLITS:
            for src in set(self[name].sources):
                seen.setdefault(src, set()).add(name)
        for src, names in seen.items():
            if len(names) > 1 and names != {"owner", "calib"}:
                raise BenchError(f"source image {src!r} is in the {' and '.join(sorted(names))} splits")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across runs and machines, unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _load_raw(name: str) -> np.ndarray:
    import skimage.data as skd

    if name == "motorcycle_left":
        img = skd.stereo_motorcycle()[0]
    else:
        img = getattr(skd, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.clip(img[..., :3], 0.0, 1.0)


@lru_cache(maxsize=64)
def load_source(name: str, short_side: int, multiple: int = 1) -> np.ndarray:
    """A bundled photograph as float32 (H, W, 3) in [0, 1], short side resized to ``short_side``
    (0: original size), then cropped to multiples of ``multiple`` (the SR scale)."""
    img = _load_raw(name)
    if short_side:
        h, w = img.shape[:2]
        f = short_side / min(h, w)
        size = (max(1, round(h * f)), max(1, round(w * f)))
        # antialiased bicubic (kernel widened by the downscale factor): 10x faster than skimage's resize
        t = torch.from_numpy(img).permute(2, 0, 1)[None]
        t = torch.nn.functional.interpolate(t, size=size, mode="bicubic", antialias=f < 1, align_corners=False)
        img = np.ascontiguousarray(t[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy())
    if multiple > 1:
        h, w = img.shape[:2]
        img = img[: h - h % multiple, : w - w % multiple]
    img.setflags(write=False)
    return img


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array in [0, 1] -> float32 tensor (3, H, W)."""
    return torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).permute(2, 0, 1).contiguous()


Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]


#: what the calib pool holds: its own photographs only, or also the owner's (with draws of their own)
CALIB_POOLS = ("calib", "calib+owner")


def bundled_splits(task_key: str, degrade: Degrade, *, image_size: int, variants: int, scale: int = 1,
                   transforms: tuple[int, ...] = ALL_TRANSFORMS, calib_pool: str = "calib",
                   calib_draws: int = 0) -> Splits:
    """The four pools built from the bundled photographs with ``degrade(clean_hw3, rng) -> degraded_hw3``.

    Degradations are drawn from a generator seeded by (task_key, source, variant) only, so the pools
    are the same for every cell seed: seeds vary students and defenses, never the test set.
    ``task_key`` must change whenever the degradation parameters change.

    ``calib_draws`` (0: ``variants``) is the number of degradation draws per calib photograph: with two
    photographs, two draws each did not transfer (test cost / calib budget from -1.8x to 39x on the first
    leaderboard). ``calib_pool="calib+owner"`` adds the owner's photographs to the calib pool, with draws
    apart from the owner pool's; measured on derain it transfers worse (the teacher has learnt those
    photographs, so a perturbation costs more dB on them than on unseen ones), so it is not the default.
    """
    if calib_pool not in CALIB_POOLS:
        raise BenchError(f"calib_pool must be one of {', '.join(CALIB_POOLS)}, got {calib_pool!r}.")
    pools = {}
    for split in SPLITS:
        n_var = variants  # test and calib too: one rain or haze draw per photo is a noisy score
        sources = [(src, "") for src in SOURCE_SPLITS[split]]
        if split == "calib":
            n_var = calib_draws or variants
            if calib_pool == "calib+owner":
                sources += [(src, "calib") for src in SOURCE_SPLITS["owner"]]  # draws apart from the owner's
        deg, clean, srcs = [], [], []
        for src, stream in sources:
            img = load_source(src, image_size, scale)
            drawn: list[torch.Tensor] = []
            for v in range(max(1, n_var)):
                parts = (task_key, src, v) if not stream else (task_key, src, stream, v)
                rng = np.random.default_rng(stable_seed(*parts))
                d = to_tensor(np.clip(degrade(img, rng), 0.0, 1.0))
                # a deterministic degradation (SR's bicubic) draws the same pair every time: keep it once,
                # so that a pool's size is its number of distinct pairs and no pair weighs double in a score
                if any(torch.equal(d, e) for e in drawn):
                    continue
                drawn.append(d)
                deg.append(d)
                clean.append(to_tensor(img))
                srcs.append(src)
        pools[split] = Pool(split, deg, clean, srcs, scale, tuple(transforms))
    return Splits(**pools)
