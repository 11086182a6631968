"""ZIP's defining steps with exact numbers: the degradations are projections that erase a fine trigger, and the
guided reverse process is consistent with the degraded image (an oracle denoiser makes the outcome computable).
"""

from __future__ import annotations

import pytest
import torch

from detoxops.config import BaselinesConfig, ScheduleConfig, ZipConfig
from detoxops.defenses.catalog import build_defense
from detoxops.defenses.zip import Zip, degrade, project, pseudo_inverse
from detoxops.diffusion import NoiseSchedule

H = 8


class Oracle:
    """eps(x_t, t) that denoises towards a fixed image ``target`` (diffusion space)."""

    def __init__(self, schedule, target):
        self.schedule, self.target = schedule, target
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def __call__(self, x_t, t):
        return self.schedule.predict_eps(x_t, t, self.target.expand_as(x_t))


def _schedule():
    return NoiseSchedule.from_config(ScheduleConfig())


@pytest.mark.parametrize("kind", ["gray", "pool"])
def test_degradations_are_orthogonal_projections(kind):
    x = torch.randn(3, 3, H, H, generator=torch.Generator().manual_seed(0))
    p = project(x, kind)
    torch.testing.assert_close(project(p, kind), p)  # idempotent
    assert abs(float((p * (x - p)).sum())) < 1e-4  # orthogonal: range ⟂ null part
    y = degrade(x, kind)
    torch.testing.assert_close(degrade(pseudo_inverse(y, kind), kind), y)  # A A^+ y = y


def test_degradations_destroy_a_pixel_checkerboard_trigger():
    # a zero-mean 1-px checkerboard in every channel: the pooled image does not see it at all
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    trigger = ((ii + jj) % 2 * 2 - 1).float().expand(1, 3, H, H) * 0.3
    assert float(project(trigger, "pool").abs().max()) < 1e-6
    x = torch.rand(1, 3, H, H, generator=torch.Generator().manual_seed(1)) * 0.4 - 0.2
    torch.testing.assert_close(project(x + trigger, "pool"), project(x, "pool"))


def test_pool_needs_a_multiple_of_the_scale():
    with pytest.raises(ValueError, match="deg_scale 3"):
        degrade(torch.zeros(1, 3, 8, 8), "pool", 3)


def test_restoration_returns_an_image_consistent_with_its_degradation():
    """With the oracle of an image x* that degrades to y, every guided step keeps x̂_0 = x*: ZIP returns x*."""
    g = torch.Generator().manual_seed(2)
    x_true = torch.rand(2, 3, H, H, generator=g) * 1.6 - 0.8
    zip_ = Zip(Oracle(_schedule(), x_true), ZipConfig(), batch_size=2)
    out = zip_((x_true + 1) / 2)
    torch.testing.assert_close(out.images, (x_true + 1) / 2, atol=1e-4, rtol=0)


@pytest.mark.parametrize("lam", [0.0, 10.0, 1e6])
def test_guidance_pulls_the_range_space_towards_the_degraded_input(lam):
    """Oracle of a *different* image x_w: the output is x_w + (1 - ᾱ_last^λ) · mean_k(A_k^+ y_k - P_k x_w)."""
    g = torch.Generator().manual_seed(3)
    # amplitudes keep (I - P) x_w + P x_in inside [-1, 1], so the output's clamp does not interfere
    x_in = torch.rand(2, 3, H, H, generator=g) * 0.6 - 0.3
    x_w = torch.rand(2, 3, H, H, generator=g) * 0.6 - 0.3
    cfg = ZipConfig(at_threshold=lam)
    zip_ = Zip(Oracle(_schedule(), x_w), cfg, batch_size=2)
    out = zip_((x_in + 1) / 2).images * 2 - 1
    last = zip_.levels()[-2]
    fade = float(zip_.schedule.abar[last]) ** lam
    pull = torch.stack([project(x_in, k) - project(x_w, k) for k in cfg.transforms]).mean(0)
    torch.testing.assert_close(out, (x_w + (1 - fade) * pull).clamp(-1, 1), atol=1e-4, rtol=0)
    if lam == 1e6:  # fully guided with one transform: the output's range part is the input's
        one = Zip(Oracle(_schedule(), x_w), ZipConfig(at_threshold=lam, transforms=["pool"]), batch_size=2)
        res = one((x_in + 1) / 2).images * 2 - 1
        torch.testing.assert_close(project(res, "pool"), project(x_in, "pool"), atol=1e-4, rtol=0)


def test_batches_are_chunked_and_deterministic():
    x = torch.rand(5, 3, H, H, generator=torch.Generator().manual_seed(4))
    target = torch.zeros(1, 3, H, H)
    a = Zip(Oracle(_schedule(), target), ZipConfig(steps=5), batch_size=2, seed=1)(x).images
    b = Zip(Oracle(_schedule(), target), ZipConfig(steps=5), batch_size=5, seed=1)(x).images
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # exact oracle: no dependence on the noise drawn


def test_catalog_builds_zip_from_params():
    zip_ = build_defense("zip", Oracle(_schedule(), torch.zeros(1, 3, H, H)),
                         baselines=BaselinesConfig(zip=ZipConfig(steps=4)))
    assert isinstance(zip_, Zip) and zip_.cfg.steps == 4 and zip_.levels()[:2] == [1000, 750]
    with pytest.raises(ValueError, match="needs a purifier"):
        build_defense("zip")
    with pytest.raises(ValueError, match="no sampler to choose"):
        build_defense("zip-ddim", Oracle(_schedule(), torch.zeros(1, 3, H, H)))
