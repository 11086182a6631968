"""Vectorised per-pixel SSIM in torch, numerically matching ``skimage.metrics.structural_similarity``.

SampDetox's "PixelSSIM" (paper, appendix A.4) is skimage's ``structural_similarity(..., full=True)`` map, and
DataElixir's candidate distance uses the mean SSIM. skimage runs one image and one channel at a time on the
CPU; this module does the whole batch at once with the same arithmetic:

* local means / variances / covariance from a uniform ``window x window`` filter (or a Gaussian with
  sigma 1.5, truncated at 3.5 sigma = 11 taps) with scipy's ``mode="reflect"`` border, i.e. half-sample
  symmetric padding ``d c b a | a b c d | d c b a`` (numpy's ``"symmetric"``; torch's own ``"reflect"`` is a
  different rule, so the padding is done by index gathering);
* sample covariance (``NP / (NP - 1)``, NP = window ** 2), K1 = 0.01, K2 = 0.03, C = (K * data_range) ** 2;
* the mean SSIM crops ``(window - 1) // 2`` pixels from every border before averaging, per channel, then
  averages the channels -- exactly what skimage does with ``channel_axis``.

``data_range`` is the width of the value range of the inputs: 1.0 for images in [0, 1], 2.0 in the diffusion
space [-1, 1], 255 for raw uint8 values. Passing 255 for [0, 1] images (as SampDetox's public code does) makes
C1, C2 dominate and turns the map into roughly a local mean-difference map; see ``localisers``.

Agreement with skimage (tests/defenses/test_ssim.py): within 1e-10 in float64, within 1e-4 in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

K1 = 0.01
K2 = 0.03
GAUSSIAN_SIGMA = 1.5
GAUSSIAN_TRUNCATE = 3.5
GAUSSIAN_WINDOW = 2 * int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5) + 1  # 11, as skimage / scipy ndimage

__all__ = ["GAUSSIAN_WINDOW", "ssim", "ssim_map", "uniform_filter"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, window: int) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"ssim: expected torch tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.ndim != 4:
        raise ValueError(f"ssim: expected (B, C, H, W) tensors, got shape {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if window < 3 or window % 2 == 0:
        raise ValueError(f"ssim: window must be an odd integer >= 3, got {window}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim: window {window} exceeds the image extent {tuple(a.shape[-2:])}")


def _symmetric_index(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``size`` axis padded by ``pad`` on both sides with scipy's "reflect" rule."""
    idx = torch.arange(-pad, size + pad, device=device)
    period = 2 * size
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - 1 - idx, idx)


def _pad_symmetric(x: torch.Tensor, pad: int) -> torch.Tensor:
    rows = _symmetric_index(x.shape[-2], pad, x.device)
    cols = _symmetric_index(x.shape[-1], pad, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = GAUSSIAN_WINDOW // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / GAUSSIAN_SIGMA) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def _local_mean(x: torch.Tensor, window: int, gaussian: bool) -> torch.Tensor:
    """Filter every channel of ``x`` (B, K, H, W) with the SSIM window; output has the input's size."""
    if not gaussian:
        return F.avg_pool2d(_pad_symmetric(x, window // 2), kernel_size=window, stride=1)
    taps = _gaussian_taps(x.dtype, x.device)
    k = x.shape[1]
    padded = _pad_symmetric(x, GAUSSIAN_WINDOW // 2)
    horizontal = F.conv2d(padded, taps.view(1, 1, 1, -1).expand(k, 1, 1, -1), groups=k)
    return F.conv2d(horizontal, taps.view(1, 1, -1, 1).expand(k, 1, -1, 1), groups=k)


def uniform_filter(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window x window`` neighbourhood of every pixel of (B, K, H, W), scipy-"reflect" borders
    (``scipy.ndimage.uniform_filter(x, size=window)`` per channel); the output has the input's size."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"uniform_filter: window must be a positive odd integer, got {window}")
    if window == 1:
        return x
    return _local_mean(x, window, gaussian=False)


def ssim_map(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int = 7,
    data_range: float = 1.0,
    gaussian: bool = False,
    channel_mean: bool = False,
) -> torch.Tensor:
    """Per-pixel SSIM between two batches of images.

    Args:
        a, b: float tensors (B, C, H, W) with values in a range of width ``data_range``.
        window: side of the uniform window (odd, >= 3). With ``gaussian=True`` the filter is skimage's 11-tap
            Gaussian (sigma 1.5) and ``window`` only sets the covariance normalisation, as in skimage;
            pass ``window=GAUSSIAN_WINDOW`` to match ``structural_similarity(gaussian_weights=True)``.
        data_range: width of the value range (1.0 for [0, 1], 2.0 for [-1, 1], 255 for uint8 values).
        gaussian: Gaussian instead of uniform weights.
        channel_mean: average the per-channel maps into one (B, 1, H, W) map.

    Returns:
        (B, C, H, W) per-channel maps (skimage's ``full=True`` output, channel-first), or (B, 1, H, W).
    """
    _check_pair(a, b, window)
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be positive, got {data_range}")
    if not a.is_floating_point():
        a = a.double()
    b = b.to(a.dtype)
    channels = a.shape[1]
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    ux, uy, uxx, uyy, uxy = _local_mean(stacked, window, gaussian).split(channels, dim=1)
    np_ = window * window
    cov_norm = np_ / (np_ - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    numerator = (2 * ux * uy + c1) * (2 * vxy + c2)
    denominator = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    s = numerator / denominator
    return s.mean(dim=1, keepdim=True) if channel_mean else s


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int = 7,
    data_range: float = 1.0,
    gaussian: bool = False,
) -> torch.Tensor:
    """Mean SSIM per image, (B,): skimage's ``structural_similarity(..., channel_axis=...)`` for each pair.

    As in skimage, ``(window - 1) // 2`` border pixels are left out of the average (per channel, then the
    channel means are averaged, which equals the mean over the cropped (C, H, W) map).
    """
    s = ssim_map(a, b, window=window, data_range=data_range, gaussian=gaussian)
    pad = (window - 1) // 2
    h, w = s.shape[-2:]
    cropped = s[..., pad : h - pad, pad : w - pad]
    return cropped.double().mean(dim=(1, 2, 3)).to(s.dtype)
