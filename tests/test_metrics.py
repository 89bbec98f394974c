"""bench.metrics agrees with scikit-image's reference PSNR/SSIM under the papers' conventions."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bench.metrics import psnr, rgb_to_y, ssim


def _pairs(kind: str, n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        target = torch.rand(n, 3, h, w, generator=g, dtype=torch.float64)
        pred = (target + 0.2 * torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    else:  # smooth: upsampled low-resolution noise, slightly perturbed
        low = torch.rand(n, 3, h // 8 + 2, w // 8 + 2, generator=g, dtype=torch.float64)
        target = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        pred = (target + 0.03 * torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, target


def _np(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float64 array."""
    return img.permute(1, 2, 0).numpy().astype(np.float64)


def _y(img_hwc: np.ndarray) -> np.ndarray:
    return rgb2ycbcr(img_hwc)[..., 0] / 255.0


def _ref(pred: torch.Tensor, target: torch.Tensor, y_channel: bool, shave: int) -> tuple[float, float]:
    ps, ss = [], []
    for p, t in zip(pred, target):
        a, b = _np(p), _np(t)
        if shave:
            a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
        if y_channel:
            a, b = _y(a), _y(b)
            ss.append(structural_similarity(b, a, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=1.0))
        else:
            ss.append(structural_similarity(b, a, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=1.0, channel_axis=2))
        ps.append(peak_signal_noise_ratio(b, a, data_range=1.0))
    return float(np.mean(ps)), float(np.mean(ss))


@pytest.mark.parametrize("kind", ["random", "smooth"])
@pytest.mark.parametrize("y_channel", [False, True])
@pytest.mark.parametrize("shave", [0, 4])
@pytest.mark.parametrize("size", [(48, 48), (40, 64)])
def test_matches_skimage(kind, y_channel, shave, size):
    pred, target = _pairs(kind, 3, *size, seed=zlib.crc32(repr((kind, y_channel, shave, size)).encode()))
    ref_psnr, ref_ssim = _ref(pred, target, y_channel, shave)
    assert psnr(pred, target, y_channel=y_channel, shave=shave) == pytest.approx(ref_psnr, abs=1e-3)
    assert ssim(pred, target, y_channel=y_channel, shave=shave) == pytest.approx(ref_ssim, abs=1e-4)


def test_float32_inputs_match():
    pred, target = _pairs("smooth", 2, 32, 40)
    ref_psnr, ref_ssim = _ref(pred, target, False, 0)
    assert psnr(pred.float(), target.float()) == pytest.approx(ref_psnr, abs=1e-3)
    assert ssim(pred.float(), target.float()) == pytest.approx(ref_ssim, abs=1e-4)


def test_y_channel_is_matlab_rgb2ycbcr():
    img = torch.rand(2, 3, 8, 9, dtype=torch.float64)
    ours = rgb_to_y(img)[:, 0].numpy()
    for i in range(2):
        np.testing.assert_allclose(ours[i], _y(_np(img[i])), atol=1e-12)
    # white and black land on 235/255 and 16/255
    assert float(rgb_to_y(torch.ones(1, 3, 1, 1))) == pytest.approx(235 / 255)
    assert float(rgb_to_y(torch.zeros(1, 3, 1, 1))) == pytest.approx(16 / 255)


def test_batch_mean_is_mean_of_per_image_scores():
    pred, target = _pairs("random", 4, 32, 32)
    per_psnr = [psnr(pred[i:i + 1], target[i:i + 1]) for i in range(4)]
    per_ssim = [ssim(pred[i:i + 1], target[i:i + 1]) for i in range(4)]
    assert psnr(pred, target) == pytest.approx(float(np.mean(per_psnr)), abs=1e-9)
    assert ssim(pred, target) == pytest.approx(float(np.mean(per_ssim)), abs=1e-9)


def test_single_image_without_batch_dim():
    pred, target = _pairs("random", 1, 24, 24)
    assert psnr(pred[0], target[0]) == pytest.approx(psnr(pred, target))
    assert ssim(pred[0], target[0]) == pytest.approx(ssim(pred, target))


def test_identical_images_are_finite_and_perfect():
    img = torch.rand(2, 3, 20, 20)
    assert psnr(img, img) == pytest.approx(100.0)
    assert ssim(img, img) == pytest.approx(1.0)


def test_inputs_are_clamped():
    target = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    pred = target.clone()
    pred[..., :2, :2] = 1.7  # out of range values score as 1.0
    clamped = pred.clamp(0, 1)
    assert psnr(pred, target) == pytest.approx(psnr(clamped, target))
    assert ssim(pred, target) == pytest.approx(ssim(clamped, target))


def test_errors():
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError):
        psnr(a, torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError):
        ssim(a[..., :8, :8], a[..., :8, :8])  # smaller than the 11x11 window
    with pytest.raises(ValueError):
        psnr(a, a, shave=8)
    with pytest.raises(ValueError):
        psnr(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), y_channel=True)
