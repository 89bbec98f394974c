"""Your side of the example: your own paired data and your own training, no suite involved.

    python train.py [--steps 200]

writes ``my_pairs/`` (input/ noisy, target/ clean: 12 pairs of 128x128 crops of scikit-image's bundled
photographs, one photograph each, Gaussian noise of sigma 0.1) and trains ``my_model.make_teacher()``
on the first 5 pairs (by name: the ones the suite's ``folder`` task puts in its ``owner`` split, so the
teacher never sees the suite's attacker, calib or test pairs), then saves its state dict to
``my_teacher.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from my_model import make_teacher
from skimage.io import imsave
from skimage.transform import resize

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "moon", "retina", "rocket")
OWNER = 5  # the folder task's owner split of 12 pairs: the first 5 by name


def make_pairs(root: Path, size: int = 128, sigma: float = 0.1) -> None:
    rng = np.random.default_rng(0)
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(PHOTOS):
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        img = img / 255.0 if img.max() > 1 else img
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        f = size / min(h, w)
        img = resize(img, (round(h * f), round(w * f)), anti_aliasing=True)
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        clean = np.clip(img[top:top + size, left:left + size], 0, 1)
        noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 1)
        imsave(root / "target" / f"{i:02d}.png", (clean * 255 + 0.5).astype(np.uint8), check_contrast=False)
        imsave(root / "input" / f"{i:02d}.png", (noisy * 255 + 0.5).astype(np.uint8), check_contrast=False)


def load(path: Path) -> torch.Tensor:
    from skimage.io import imread

    return torch.from_numpy(imread(path)[..., :3].astype(np.float32) / 255).permute(2, 0, 1)


def train(root: Path, out: Path, steps: int) -> None:
    names = sorted(p.name for p in (root / "input").glob("*.png"))[:OWNER]
    xs = torch.stack([load(root / "input" / n) for n in names])
    ys = torch.stack([load(root / "target" / n) for n in names])
    torch.manual_seed(0)
    model = make_teacher()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    crop = 48
    for step in range(steps):
        i = torch.randint(len(xs), (8,))
        t, left = torch.randint(xs.shape[-2] - crop + 1, (2,)).tolist()
        loss = F.l1_loss(model(xs[i, :, t:t + crop, left:left + crop]), ys[i, :, t:t + crop, left:left + crop])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: L1 {loss.item():.4f}")
    torch.save(model.state_dict(), out)
    print(f"saved {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    make_pairs(here / "my_pairs")
    train(here / "my_pairs", here / "my_teacher.pt", args.steps)
