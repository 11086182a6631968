"""denoise: DDPM / DDIM from a given x_t, per-sample and per-pixel levels, streamed intermediates.

Whole trajectories are compared with diffusers' schedulers driven by the same tiny UNet and the same noise
(1e-4 absolute, the single-step tolerance of test_schedule); the per-pixel / global equivalences are exact.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from detoxops.diffusion import denoise, snap_levels, step_levels

ATOL = 1e-4


def _batch(seed: int = 0, b: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 8, 8, generator=g) * 2 - 1


def test_step_levels():
    assert step_levels(5) == [5, 4, 3, 2, 1]
    assert step_levels(120, "ddim", 20) == [120, 100, 80, 60, 40, 20]
    assert step_levels(7, "ddim", 10) == [7]
    assert step_levels(0) == []
    with pytest.raises(ValueError, match="mode"):
        step_levels(5, "euler")


def test_ddpm_trajectory_matches_diffusers(tiny_purifier):
    x = _batch()
    t_start = 6
    ours = denoise(tiny_purifier, x, t_start, mode="ddpm", generator=torch.Generator().manual_seed(11))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    g = torch.Generator().manual_seed(11)
    y = x.clone()
    with torch.no_grad():
        for level in range(t_start, 0, -1):
            eps = tiny_purifier.unet(y, torch.full((3,), level - 1)).sample
            y = ref.step(eps, level - 1, y, generator=g).prev_sample
    torch.testing.assert_close(ours, y, rtol=0, atol=ATOL)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_trajectory_matches_diffusers(tiny_purifier, eta):
    x = _batch(1)
    stride, t_start = 20, 120
    ours = denoise(tiny_purifier, x, t_start, mode="ddim", stride=stride, eta=eta,
                   generator=torch.Generator().manual_seed(5))
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(1000 // stride)
    g = torch.Generator().manual_seed(5)
    y = x.clone()
    with torch.no_grad():
        for level in step_levels(t_start, "ddim", stride):
            eps = tiny_purifier.unet(y, torch.full((3,), level - 1)).sample
            y = ref.step(eps, level - 1, y, eta=eta, generator=g).prev_sample
    torch.testing.assert_close(ours, y, rtol=0, atol=ATOL)


def test_ddim_with_eta_one_and_stride_one_is_ddpm(tiny_purifier):
    """DDIM's eta = 1 variance at stride 1 is DDPM's posterior variance and its mean is DDPM's posterior mean
    (algebraically, for any x̂_0), with the same noise draws: the trajectories agree when x̂_0 is not clipped
    (with clipping DDIM keeps the unclipped ε, as diffusers does, so the two differ where clipping bites)."""
    x = _batch(2) * 0.5
    kw = dict(clip_x0=False)
    ddpm = denoise(tiny_purifier, x, 8, mode="ddpm", generator=torch.Generator().manual_seed(3), **kw)
    ddim = denoise(tiny_purifier, x, 8, mode="ddim", stride=1, eta=1.0, generator=torch.Generator().manual_seed(3),
                   **kw)
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=ATOL)
    deterministic = denoise(tiny_purifier, x, 8, mode="ddim", stride=1, eta=0.0, **kw)
    assert (deterministic - ddpm).abs().max() > 100 * ATOL


@pytest.mark.parametrize(("mode", "stride"), [("ddpm", 1), ("ddim", 4)])
def test_constant_map_and_per_sample_levels_equal_global(tiny_purifier, mode, stride):
    x = _batch(2)
    kw = {"mode": mode, "stride": stride}
    glob = denoise(tiny_purifier, x, 12, generator=torch.Generator().manual_seed(3), **kw)
    tmap = torch.full((3, 1, 8, 8), 12)
    per_pixel = denoise(tiny_purifier, x, 0, t_map=tmap, generator=torch.Generator().manual_seed(3), **kw)
    per_sample = denoise(tiny_purifier, x, torch.tensor([12, 12, 12]),
                         generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(per_pixel, glob)
    assert torch.equal(per_sample, glob)


def test_per_pixel_levels_gate_updates(tiny_purifier):
    x = _batch(3, b=2)
    tmap = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    tmap[:, :, :4] = 10  # top half noised to 10
    tmap[:, :, 4:6] = 4  # two rows to 4, the rest stays at 0
    seen = []

    def record(t, xt, x0):
        seen.append((t, xt))

    out = denoise(tiny_purifier, x, 0, t_map=tmap, generator=torch.Generator().manual_seed(0), on_step=record)
    assert [t for t, _ in seen] == list(range(9, -1, -1))
    # level-0 pixels never change; level-4 pixels keep their input until the step leaving level 4
    assert torch.equal(out[:, :, 6:], x[:, :, 6:])
    for t, xt in seen:
        if t >= 4:
            assert torch.equal(xt[:, :, 4:6], x[:, :, 4:6])
    assert not torch.equal(seen[-1][1][:, :, 4:6], x[:, :, 4:6])
    assert not torch.equal(out[:, :, :4], x[:, :, :4])


def test_per_sample_levels_are_independent_of_batch_mates(tiny_purifier):
    """A sample at level 5 in a batch whose other sample is at 9 ends where it would alone (DDIM eta 0,
    where no noise is shared between samples)."""
    x = _batch(4, b=2)
    both = denoise(tiny_purifier, x, torch.tensor([9, 5]), mode="ddim", stride=1)
    alone = denoise(tiny_purifier, x[1:], 5, mode="ddim", stride=1)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-6)


def test_on_step_levels_for_ddim_and_streaming(tiny_purifier):
    x = _batch(5, b=2)
    levels, x0s = [], []
    out = denoise(tiny_purifier, x, 50, mode="ddim", stride=20, on_step=lambda t, xt, x0: (levels.append(t),
                  x0s.append(x0)))
    assert levels == [30, 10, 0]
    assert all(x0.shape == x.shape and float(x0.abs().max()) <= 1.0 for x0 in x0s)
    assert out.shape == x.shape


def test_snap_levels():
    levels = torch.tensor([0, 1, 19, 20, 21, 99, 100, 120])
    assert snap_levels(levels, 120, 20).tolist() == [0, 20, 20, 20, 40, 100, 100, 120]


def test_denoise_rejects_bad_inputs(tiny_purifier):
    x = _batch()
    with pytest.raises(ValueError, match="t_map"):
        denoise(tiny_purifier, x, 0, t_map=torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match="outside"):
        denoise(tiny_purifier, x, 1001)
    with pytest.raises(ValueError, match="per-sample"):
        denoise(tiny_purifier, x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="purifier expects"):
        denoise(tiny_purifier, torch.zeros(1, 3, 16, 16), 3)
