"""SampDetox semantics and numbers, with an exact "oracle" denoiser and a tiny untrained UNet.

The oracle predicts the noise that separates x_t from a known clean image, so a restoration from any level
returns that clean image (exactly for DDIM, eta = 0): a controlled purifier that lets the tests check what the
algorithm does with its output -- where the map points, which pixels stage 2 touches -- with real numbers.
"""

from __future__ import annotations

import pytest
import torch

from detoxops.config import SampDetoxConfig, ScheduleConfig
from detoxops.defenses.ablations import NoiseOnly, Stage1Only
from detoxops.defenses.catalog import build_defense
from detoxops.defenses.map_quality import roc_auc
from detoxops.defenses.sampdetox import SampDetox, noise_levels_from_map

diffusion = pytest.importorskip("detoxops.diffusion")
if not hasattr(diffusion, "denoise"):
    pytest.skip("detoxops.diffusion.denoise not available yet", allow_module_level=True)

H = 16


def _schedule():
    return diffusion.NoiseSchedule.from_config(ScheduleConfig())


class OraclePurifier:
    """eps(x_t, t) = (x_t - sqrt(abar_t) clean) / sqrt(1 - abar_t), with the schedule's own q_sample."""

    def __init__(self, schedule, clean01: torch.Tensor):
        self.schedule = schedule
        self.clean = clean01 * 2 - 1
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.calls = 0

    def __call__(self, x_t, t):
        self.calls += 1
        clean = self.clean.repeat(x_t.shape[0] // self.clean.shape[0], 1, 1, 1)
        t = t.view(-1, 1, 1, 1) if torch.is_tensor(t) and t.ndim == 1 else t
        a = self.schedule.q_sample(torch.ones_like(x_t), t, torch.zeros_like(x_t))
        s = self.schedule.q_sample(torch.zeros_like(x_t), t, torch.ones_like(x_t))
        return (x_t - a * clean) / s


class RefusingPurifier:
    """For variants that must never run the UNet."""

    def __init__(self, schedule):
        self.schedule = schedule
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def __call__(self, x_t, t):
        raise AssertionError("the UNet was called")


def _images(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 4, 4, generator=g) * 0.6 + 0.2
    clean = torch.nn.functional.interpolate(low, size=(H, H), mode="bilinear", align_corners=False)
    poisoned = clean.clone()
    poisoned[:, :, -4:-1, -4:-1] = 1.0
    mask = torch.zeros(b, H, H, dtype=torch.bool)
    mask[:, -4:-1, -4:-1] = True
    return clean, poisoned, mask


def _cfg(**kw):
    kw.setdefault("batch_size", 64)
    return SampDetoxConfig(**kw)


def test_zero_levels_return_the_input():
    clean, poisoned, _ = _images()
    purifier = OraclePurifier(_schedule(), clean)
    out = SampDetox(purifier, _cfg(profile="faithful", t1=0, t2=0))(poisoned)
    torch.testing.assert_close(out.images, poisoned, atol=1e-6, rtol=0)
    assert purifier.calls == 0
    assert int(out.noise_levels.max()) == 0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_faithful_with_oracle_flags_the_patch_and_removes_it(sampler):
    clean, poisoned, mask = _images()
    purifier = OraclePurifier(_schedule(), clean)
    out = SampDetox(purifier, _cfg(profile="faithful", sampler=sampler))(poisoned)
    assert out.images.shape == poisoned.shape and out.trigger_map.shape == (2, 1, H, H)
    assert out.noise_levels.dtype == torch.int64 and int(out.noise_levels.max()) <= 120
    # a perfect stage-1 restoration makes the SSIM map single the patch out
    assert roc_auc(out.trigger_map, mask, per_image=False) > 0.9
    patch = mask[:, None].expand_as(poisoned)
    assert (out.stage1 - clean)[patch].abs().max() < 0.05
    assert (out.images - clean)[patch].abs().max() < 0.05
    if sampler == "ddim":  # 20 global steps / stride 20 = 1 pass, stage 2 <= 120 / 20 = 6 passes
        assert purifier.calls <= 1 + 6


def test_level_zero_pixels_are_untouched_with_input_base():
    clean, poisoned, mask = _images()
    purifier = OraclePurifier(_schedule(), clean)
    cfg = _cfg(
        profile="robust",
        sampler="ddim",
        localiser="diff",
        t_loc=100,
        loc_window=1,
        map_norm="minmax",
        stage2="mask",
        mask_threshold=0.5,
        t_mask=300,
        stage2_base="input",
    )
    out = SampDetox(purifier, cfg)(poisoned)
    keep = (out.noise_levels == 0).expand_as(poisoned)
    assert keep.any()
    torch.testing.assert_close(out.images[keep], poisoned[keep], atol=1e-6, rtol=0)
    flagged = out.noise_levels[:, 0] > 0
    assert torch.equal(flagged, mask)  # diff map of an oracle restoration = exactly the patch
    assert (out.images - clean)[mask[:, None].expand_as(poisoned)].abs().max() < 0.02


def test_noise_levels_soft_and_mask():
    tmap = torch.tensor([[[[0.0, 0.25], [0.6, 1.0]]]])
    soft = noise_levels_from_map(tmap, _cfg(profile="faithful", t2=120))
    assert soft.tolist() == [[[[0, 30], [72, 120]]]]
    mask = noise_levels_from_map(tmap, _cfg(profile="robust", stage2="mask", mask_threshold=0.5, t_mask=400))
    assert mask.tolist() == [[[[0, 0], [400, 400]]]]


def test_noise_levels_of_repaired_images_use_t2_repaired():
    tmap = torch.tensor([[[[0.0, 0.25], [0.6, 1.0]]]]).repeat(3, 1, 1, 1)
    repaired = torch.tensor([False, True, False])
    levels = noise_levels_from_map(tmap, _cfg(profile="faithful", t2=120, t2_repaired=40), repaired)
    assert levels[:, 0, 1, 1].tolist() == [120, 40, 120]
    assert levels[1].tolist() == [[[0, 10], [24, 40]]]
    # unset, or no repair information: t2 everywhere (the paper's rule)
    same = noise_levels_from_map(tmap, _cfg(profile="faithful", t2=120), repaired)
    assert torch.equal(same, noise_levels_from_map(tmap, _cfg(profile="faithful", t2=120, t2_repaired=40)))
    assert same[:, 0, 1, 1].tolist() == [120, 120, 120]


def test_tiny_unet_shapes_determinism_and_seed():
    clean, poisoned, _ = _images()
    torch.manual_seed(0)
    from detoxops.config import UNetConfig

    unet = diffusion.build_unet(UNetConfig(sample_size=H, block_out_channels=[8, 16, 16]))
    purifier = diffusion.Purifier(unet, _schedule())
    for sampler in ("ddpm", "ddim"):
        cfg = _cfg(profile="faithful", sampler=sampler, t1=4, t2=6, ddim_stride=2)
        a = SampDetox(purifier, cfg)(poisoned)
        b = SampDetox(purifier, cfg)(poisoned)
        assert a.images.shape == poisoned.shape and torch.isfinite(a.images).all()
        assert 0 <= float(a.images.min()) and float(a.images.max()) <= 1
        torch.testing.assert_close(a.images, b.images)
        c = SampDetox(purifier, cfg.model_copy(update={"seed": 1}))(poisoned)
        assert not torch.equal(a.images, c.images)


def test_ddim_eta_one_stride_one_is_ddpm():
    """``sampdetox.ddim_eta`` reaches the sampler: DDIM with eta = 1 and stride 1 takes DDPM's steps (same
    posterior mean and variance, same noise draws); eta 0 is a different, deterministic process."""
    from detoxops.config import UNetConfig

    _, poisoned, _ = _images()
    torch.manual_seed(0)
    unet = diffusion.build_unet(UNetConfig(sample_size=H, block_out_channels=[8, 16, 16]))
    purifier = diffusion.Purifier(unet, _schedule())
    base = _cfg(profile="faithful", t1=4, t2=6)
    ddpm = SampDetox(purifier, base.model_copy(update={"sampler": "ddpm"}))(poisoned)
    ddim1 = SampDetox(purifier, base.model_copy(update={"sampler": "ddim", "ddim_stride": 1, "ddim_eta": 1.0}))(
        poisoned
    )
    ddim0 = SampDetox(purifier, base.model_copy(update={"sampler": "ddim", "ddim_stride": 1}))(poisoned)
    torch.testing.assert_close(ddim1.noise_levels, ddpm.noise_levels)
    # equal up to where x̂_0 clipping bites (DDIM keeps the unclipped ε, as diffusers does: see test_samplers)
    gap_eta1 = float((ddim1.images - ddpm.images).abs().mean())
    gap_eta0 = float((ddim0.images - ddpm.images).abs().mean())
    assert gap_eta1 < 1e-3 and gap_eta1 < gap_eta0 / 10, (gap_eta1, gap_eta0)
    with pytest.raises(ValueError):
        _cfg(ddim_eta=1.5)


def test_batching_concatenates_outputs():
    clean, poisoned, _ = _images(b=3)
    purifier = OraclePurifier(_schedule(), clean[:1])  # broadcast to any batch size
    out = SampDetox(purifier, _cfg(profile="faithful", sampler="ddim", batch_size=2))(poisoned)
    assert out.images.shape == poisoned.shape and out.stage1.shape == poisoned.shape
    assert out.maps["trigger_map"].shape == (3, 1, H, H)


def test_stage1_only_and_noise_only():
    clean, poisoned, _ = _images()
    purifier = OraclePurifier(_schedule(), clean)
    full = SampDetox(purifier, _cfg(profile="faithful", sampler="ddim"))(poisoned)
    s1 = Stage1Only(purifier, _cfg(profile="faithful", sampler="ddim"))(poisoned)
    torch.testing.assert_close(s1.images, full.stage1)
    noisy = NoiseOnly(RefusingPurifier(_schedule()), _cfg(profile="faithful"))(poisoned)
    assert noisy.images.shape == poisoned.shape
    assert (noisy.images - poisoned).abs().mean() > 0.02  # noise was added, nothing denoised it


def test_catalog_and_config_errors():
    clean, _, _ = _images()
    purifier = OraclePurifier(_schedule(), clean)
    assert build_defense("faithful-ddim", purifier).cfg.sampler == "ddim"
    assert build_defense("faithful-ddim", purifier).cfg.ddim_stride == 20  # the configured stride
    strided = build_defense("faithful-ddim10", purifier)
    assert (strided.cfg.sampler, strided.cfg.ddim_stride, strided.cfg.resolved().t1) == ("ddim", 10, 20)
    assert build_defense("sampdetox-ddpm", purifier, _cfg(sampler="ddim")).cfg.sampler == "ddpm"
    for bad in ("faithful-ddpm10", "faithful-ddim0", "faithful-ddimx", "faithful-dd"):
        with pytest.raises(ValueError, match="defense"):
            build_defense(bad, purifier)
    assert build_defense("faithful", purifier, _cfg(t2=300)).cfg.t2 == 120  # named profile wins
    assert build_defense("sampdetox", purifier, _cfg(t2=300)).cfg.t2 == 300
    assert build_defense("public_code", purifier).cfg.t1 == 120
    with pytest.raises(ValueError, match="unknown defense"):
        build_defense("magic", purifier)
    with pytest.raises(ValueError, match="needs a purifier"):
        build_defense("stage1")
    with pytest.raises(ValueError, match="exceeds"):
        SampDetox(purifier, _cfg(t1=5000))
