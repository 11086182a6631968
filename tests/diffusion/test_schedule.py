"""NoiseSchedule: schedules and closed forms, against the formulas and against diffusers' schedulers.

Tolerances: our tables and coefficients are float64 (diffusers keeps float32 tables), so tables agree to
1e-5 relative; single steps on float32 images agree with diffusers' float32 steps to 1e-4 absolute (for
|x| ≤ ~4). The residual is diffusers' own rounding: at low levels 1 - ᾱ_t ≈ 1e-4 loses ~1e-3 relative
accuracy in float32, and our float32 step is checked to be at least as close to the float64 result.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from detoxops.config import ScheduleConfig
from detoxops.diffusion import NoiseSchedule

STEP_ATOL = 1e-4


def test_linear_and_cosine_tables_match_diffusers():
    lin = NoiseSchedule.from_config(ScheduleConfig(kind="linear"))
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    assert lin.T == lin.num_train_timesteps == 1000
    torch.testing.assert_close(lin.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
    cos = NoiseSchedule.from_config(ScheduleConfig(kind="cosine"))
    ref_cos = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(cos.betas.float(), ref_cos.betas, rtol=1e-5, atol=1e-7)
    assert float(lin.abar[0]) == 1.0  # level 0 is the clean image


def test_from_diffusers_config_roundtrip():
    sched = NoiseSchedule.cosine(200)
    again = NoiseSchedule.from_diffusers_config(sched.to_diffusers_config())
    assert torch.equal(again.betas, sched.betas)
    lin = NoiseSchedule.from_diffusers_config({"num_train_timesteps": 500, "beta_start": 1e-4, "beta_end": 0.03})
    assert torch.allclose(lin.betas, torch.linspace(1e-4, 0.03, 500, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule.from_diffusers_config({"beta_schedule": "sigmoid"})


def test_q_sample_closed_form_per_sample_and_per_pixel():
    sched = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 20, 999])
    out = sched.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        ab = sched.abar[ti]
        torch.testing.assert_close(out[i], ab.sqrt() * x0[i] + (1 - ab).sqrt() * noise[i], rtol=0, atol=1e-12)
    assert torch.equal(out[0], x0[0])  # level 0 leaves the image untouched
    # a per-pixel map, constant per sample, equals the per-sample form; a varying map is elementwise
    tmap = t.view(3, 1, 1, 1).expand(3, 1, 4, 4)
    assert torch.equal(sched.q_sample(x0, tmap, noise), out)
    varying = torch.randint(0, 1001, (3, 1, 4, 4), generator=g)
    got = sched.q_sample(x0, varying, noise)
    ab = sched.abar[varying]
    torch.testing.assert_close(got, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, rtol=0, atol=1e-12)


def test_predict_x0_inverts_q_sample_and_rejects_bad_levels():
    sched = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    tmap = torch.randint(1, 1001, (2, 1, 4, 4), generator=g)
    x_t = sched.q_sample(x0, tmap, noise)
    torch.testing.assert_close(sched.predict_x0(x_t, tmap, noise), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(sched.predict_eps(x_t, tmap, x0), noise, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="outside"):
        sched.q_sample(x0, 1001, noise)
    with pytest.raises(ValueError, match="noise levels"):
        sched.q_sample(x0, torch.tensor([-1, 3]), noise)


@pytest.mark.parametrize("level", [1, 2, 20, 500, 1000])
def test_ddpm_step_matches_diffusers(level):
    sched = NoiseSchedule.linear()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        variance_type="fixed_small")
    g = torch.Generator().manual_seed(level)
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    eps = torch.randn(x_t.shape, generator=g)
    expected = ref.step(eps, level - 1, x_t, generator=torch.Generator().manual_seed(7))
    # diffusers draws one randn of the sample's shape for every step but the last
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7)) if level > 1 else None
    got, x0 = sched.ddpm_step(x_t, level, eps, noise=noise)
    torch.testing.assert_close(got, expected.prev_sample, rtol=0, atol=STEP_ATOL)
    torch.testing.assert_close(x0, expected.pred_original_sample, rtol=0, atol=STEP_ATOL)
    truth, _ = sched.ddpm_step(x_t.double(), level, eps.double(), noise=None if noise is None else noise.double())
    ours_err = (got.double() - truth).abs().max()
    theirs_err = (expected.prev_sample.double() - truth).abs().max()
    assert ours_err <= theirs_err + 1e-6


def test_ddpm_step_posterior_closed_form():
    """Mean = (√ᾱ_{t-1} β_t x̂0 + √α_t (1-ᾱ_{t-1}) x_t) / (1-ᾱ_t), variance β̃_t, in float64."""
    sched = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(x_t.shape, generator=g, dtype=torch.float64) * 0.1
    noise = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
    t = 50
    ab, ab_prev, beta = sched.abar[t], sched.abar[t - 1], sched.betas[t - 1]
    x0 = ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
    mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * x_t) / (1 - ab)
    var = beta * (1 - ab_prev) / (1 - ab)
    got, _ = sched.ddpm_step(x_t, t, eps, noise=noise)
    torch.testing.assert_close(got, mean + var.sqrt() * noise, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(("level", "stride"), [(120, 20), (20, 20), (7, 10), (999, 1), (301, 50)])
def test_ddim_step_matches_diffusers(level, stride, eta):
    sched = NoiseSchedule.linear()
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        set_alpha_to_one=True, steps_offset=0)
    ref.set_timesteps(1000 // stride)  # diffusers' step ratio = T // n = our stride
    g = torch.Generator().manual_seed(level)
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    eps = torch.randn(x_t.shape, generator=g)
    noise = torch.randn(x_t.shape, generator=g)
    expected = ref.step(eps, level - 1, x_t, eta=eta, variance_noise=noise)
    t_prev = max(level - stride, 0)
    got, x0 = sched.ddim_step(x_t, level, t_prev, eps, eta=eta, noise=noise)
    torch.testing.assert_close(got, expected.prev_sample, rtol=0, atol=STEP_ATOL)
    torch.testing.assert_close(x0, expected.pred_original_sample, rtol=0, atol=STEP_ATOL)


def test_ddim_eta_zero_is_deterministic_inversion_of_exact_eps():
    """With the true ε, a DDIM step (eta 0) lands exactly on q_sample at the lower level."""
    sched = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = sched.q_sample(x0, 200, noise)
    got, _ = sched.ddim_step(x_t, 200, 50, noise, eta=0.0)
    torch.testing.assert_close(got, sched.q_sample(x0, 50, noise), rtol=0, atol=1e-10)
