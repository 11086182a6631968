"""The torch SSIM matches skimage's structural_similarity (map and mean), batched, on several data ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from detoxops.ssim import GAUSSIAN_WINDOW, ssim, ssim_map


def _pair(seed: int, shape=(3, 3, 17, 13), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    # b correlated with a, so the map spans a useful range of values
    b = (0.7 * a + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    b[..., 2:6, 3:8] = 1.0  # a flat patch, like a white trigger
    return a.to(dtype), b.to(dtype)


def _skimage(a: torch.Tensor, b: torch.Tensor, **kw):
    maps, means = [], []
    for x, y in zip(a.double().numpy(), b.double().numpy(), strict=True):
        m, s = structural_similarity(x, y, channel_axis=0, full=True, **kw)
        means.append(m)
        maps.append(s)
    return np.stack(maps), np.array(means)


@pytest.mark.parametrize("window", [3, 7, 9])
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_uniform_map_and_mean_match_skimage_float64(window, data_range):
    a, b = _pair(0)
    ref_map, ref_mean = _skimage(a, b, win_size=window, data_range=data_range)
    ours = ssim_map(a, b, window=window, data_range=data_range)
    assert ours.shape == a.shape
    np.testing.assert_allclose(ours.numpy(), ref_map, atol=1e-10, rtol=0)
    np.testing.assert_allclose(ssim(a, b, window=window, data_range=data_range).numpy(), ref_mean, atol=1e-10)


def test_gaussian_matches_skimage():
    a, b = _pair(1, shape=(2, 3, 16, 16))
    ref_map, ref_mean = _skimage(a, b, gaussian_weights=True, data_range=1.0)
    ours = ssim_map(a, b, window=GAUSSIAN_WINDOW, data_range=1.0, gaussian=True)
    np.testing.assert_allclose(ours.numpy(), ref_map, atol=1e-10, rtol=0)
    np.testing.assert_allclose(
        ssim(a, b, window=GAUSSIAN_WINDOW, gaussian=True).numpy(), ref_mean, atol=1e-10
    )


def test_float32_within_stated_tolerance_and_diffusion_range():
    a, b = _pair(2, shape=(4, 3, 32, 32))
    for lo, hi in [(0.0, 1.0), (-1.0, 1.0)]:  # classifier space and diffusion space
        x, y = lo + (hi - lo) * a, lo + (hi - lo) * b
        ref_map, _ = _skimage(x, y, data_range=hi - lo)
        ours = ssim_map(x.float(), y.float(), data_range=hi - lo)
        assert ours.dtype == torch.float32
        np.testing.assert_allclose(ours.double().numpy(), ref_map, atol=1e-4, rtol=0)


def test_channel_mean_identity_and_range_mismatch_effect():
    a, b = _pair(3)
    per_channel = ssim_map(a, b)
    mean_map = ssim_map(a, b, channel_mean=True)
    assert mean_map.shape == (3, 1, 17, 13)
    torch.testing.assert_close(mean_map, per_channel.mean(1, keepdim=True))
    assert torch.allclose(ssim_map(a, a), torch.ones_like(a))
    # the public code's data_range=255 on [0, 1] images pushes every value towards 1
    assert ssim_map(a, b, data_range=255.0).min() > ssim_map(a, b, data_range=1.0).min()


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9)), "shapes differ"),
        ((torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)), "expected \\(B, C, H, W\\)"),
        ((torch.zeros(1, 3, 5, 5), torch.zeros(1, 3, 5, 5)), "exceeds the image extent"),
    ],
)
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        ssim_map(*args)


def test_even_window_rejected():
    with pytest.raises(ValueError, match="odd"):
        ssim_map(torch.zeros(1, 1, 9, 9), torch.zeros(1, 1, 9, 9), window=6)
