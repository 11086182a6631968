"""Table-8 baselines: shapes, ranges, determinism and the effect each one is meant to have."""

from __future__ import annotations

import pytest
import torch

from detoxops.defenses.base import NoDefense
from detoxops.defenses.transforms import Blur, Noising, ShrinkPad


def _x(b=4, h=12, seed=0):
    return torch.rand(b, 3, h, h, generator=torch.Generator().manual_seed(seed))


def test_noising_statistics_and_determinism():
    x = torch.full((8, 3, 16, 16), 0.5)
    out = Noising(std=0.1, seed=3)(x).images
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert abs(float((out - x).std()) - 0.1) < 0.01
    torch.testing.assert_close(out, Noising(std=0.1, seed=3)(x).images)
    assert not torch.equal(out, Noising(std=0.1, seed=4)(x).images)
    torch.testing.assert_close(Noising(std=0.0)(x).images, x)


def test_shrinkpad_moves_a_corner_patch_and_pads_with_zeros():
    x = torch.full((16, 3, 12, 12), 0.5)
    x[:, :, -3:, -3:] = 1.0  # white patch in the bottom-right corner
    out = ShrinkPad(pad=4, seed=0)(x).images
    assert out.shape == x.shape
    zeros = (out == 0).all(dim=1)  # (B, H, W) padding pixels
    assert torch.all(zeros.flatten(1).sum(1) == 12 * 12 - 8 * 8)  # exactly the shrunk 8x8 image survives
    # offsets differ across images (random placement), and the patch is no longer where it was for most
    first_rows = zeros.float().argmin(dim=1)[:, 6]
    assert len(set(first_rows.tolist())) > 1
    torch.testing.assert_close(out, ShrinkPad(pad=4, seed=0)(x).images)


def test_blur_smooths_and_preserves_constants():
    const = torch.full((2, 3, 10, 10), 0.3)
    torch.testing.assert_close(Blur(5, 1.0)(const).images, const)
    x = _x()
    out = Blur(5, 1.5)(x).images
    assert out.shape == x.shape
    # high-frequency energy drops
    assert (out[..., 1:] - out[..., :-1]).abs().mean() < 0.5 * (x[..., 1:] - x[..., :-1]).abs().mean()


def test_no_defense_is_identity_and_inputs_are_checked():
    x = _x()
    assert NoDefense()(x).images is x
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Blur()(x * 3)
    with pytest.raises(ValueError, match="float"):
        Blur()((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="too large"):
        ShrinkPad(pad=12)(x)
    with pytest.raises(ValueError, match="odd"):
        Blur(kernel=4)
