"""PSNR and SSIM as restoration papers compute them (DESIGN section 2, "Conventions").

Both take float tensors ``(N, 3, H, W)`` (a single ``(3, H, W)`` image is accepted too), clamp them
to [0, 1], and return the mean over the batch of the per-image score as a Python float.

- ``y_channel=True`` scores the luma of YCbCr, ITU-R BT.601 in the MATLAB ``rgb2ycbcr`` convention
  that restoration papers use: ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255`` (equal to
  ``skimage.color.rgb2ycbcr(img)[..., 0] / 255``), with data range 1 (not 219/255).
- ``shave`` removes that many border pixels on every side before scoring (SR: ``shave = scale``).
- PSNR: ``10 log10(1 / MSE)`` per image, MSE over all pixels and channels (as
  ``skimage.metrics.peak_signal_noise_ratio(..., data_range=1)``). The MSE is floored at 1e-10, so
  identical images score 100 dB rather than infinity, and a batch mean stays finite.
- SSIM: Wang et al. 2004 as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=...)``: 11x11 Gaussian window (sigma 1.5,
  truncated at 3.5 sigma), population covariance, K1 = 0.01, K2 = 0.03, computed per channel and
  averaged over channels. scikit-image filters the whole image and then averages the SSIM map over
  the region at least (11 - 1) // 2 = 5 pixels from the border, which is exactly the region where
  the window lies inside the image; here that is a 'valid' convolution, so no padding is involved.

Computation is in float64 (separable filtering as banded matrix products) to agree with scikit-image
to about 1e-12.
"""

from __future__ import annotations

import torch

#: MSE floor: identical images score 10 * log10(1 / 1e-10) = 100 dB
MSE_FLOOR = 1e-10

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_SSIM_RADIUS = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)  # 5: an 11-tap window, as scipy.ndimage
_K1, _K2 = 0.01, 0.03


def _prepare(pred: torch.Tensor, target: torch.Tensor, y_channel: bool, shave: int) -> tuple[
        torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(pred.shape)}")
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    pred = pred.detach().to(torch.float64).clamp(0, 1)
    target = target.detach().to(torch.float64).clamp(0, 1)
    if shave:
        if min(pred.shape[-2:]) <= 2 * shave:
            raise ValueError(f"shave={shave} leaves nothing of a {tuple(pred.shape[-2:])} image")
        pred = pred[..., shave:-shave, shave:-shave]
        target = target[..., shave:-shave, shave:-shave]
    if y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    return pred, target


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) BT.601 luma in [16/255, 235/255] (MATLAB rgb2ycbcr)."""
    if img.shape[-3] != 3:
        raise ValueError(f"y_channel needs RGB images (3 channels), got {img.shape[-3]}")
    w = img.new_tensor([65.481, 128.553, 24.966]).view(3, 1, 1)
    return ((img * w).sum(dim=-3, keepdim=True) + 16.0) / 255.0


def psnr(pred: torch.Tensor, target: torch.Tensor, *, y_channel: bool = False, shave: int = 0) -> float:
    """Mean PSNR (dB, data range 1) over the batch; see the module docstring for conventions."""
    pred, target = _prepare(pred, target, y_channel, shave)
    mse = (pred - target).pow(2).flatten(1).mean(dim=1).clamp_min(MSE_FLOOR)
    return float((10.0 * torch.log10(1.0 / mse)).mean())


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return g / g.sum()


def _valid_filter_matrix(n: int, device: torch.device) -> torch.Tensor:
    """(n, n - 10) banded matrix M: ``x @ M`` is the 'valid' 1-D Gaussian filtering of x's last axis.

    A banded matrix product is several times faster on CPU than a float64 depthwise convolution."""
    g = _gaussian_window(device)
    win = g.numel()
    m = torch.zeros(n, n - win + 1, dtype=torch.float64, device=device)
    cols = torch.arange(n - win + 1, device=device)
    for i in range(win):
        m[cols + i, cols] = g[i]
    return m


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM map over the valid region, (N, C, H - 10, W - 10), of images already prepared (float64)."""
    n, c, h, w = pred.shape
    win = 2 * _SSIM_RADIUS + 1
    if h < win or w < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels (after shaving), got {h}x{w}")
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    mh = _valid_filter_matrix(h, pred.device)
    mw = _valid_filter_matrix(w, pred.device)
    filt = mh.transpose(0, 1) @ (stack @ mw)  # separable Gaussian: rows, then columns
    ux, uy, uxx, uyy, uxy = filt.split(c, dim=1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1, c2 = _K1**2, _K2**2  # data range 1
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(pred: torch.Tensor, target: torch.Tensor, *, y_channel: bool = False, shave: int = 0) -> float:
    """Mean SSIM over the batch (per image: mean over channels of the mean SSIM over the valid region)."""
    pred, target = _prepare(pred, target, y_channel, shave)
    per_image = ssim_map(pred, target).mean(dim=(2, 3)).mean(dim=1)
    return float(per_image.mean())
