"""Localisers (issue #10) and the trigger-map quality metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detoxops.config import SampDetoxConfig
from detoxops.defenses.localisers import DiffMap, PixelSSIM, SpreadMap, build_localiser, normalise_map
from detoxops.defenses.map_quality import changed_pixels, roc_auc, trigger_map_quality
from detoxops.ssim import ssim_map


def _smooth_images(b=3, h=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 4, 4, generator=g)
    x01 = torch.nn.functional.interpolate(base, size=(h, h), mode="bilinear", align_corners=False)
    return x01 * 2 - 1  # diffusion space


def _with_patch(x):
    x = x.clone()
    x[:, :, -4:-1, -4:-1] = 1.0  # 3x3 white patch 1 px from the bottom-right corner
    mask = torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=torch.bool)
    mask[:, -4:-1, -4:-1] = True
    return x, mask


def restore_to_clean(clean):
    """A perfect purifier for these tests: any restoration gives back the clean image."""
    return lambda x, t: clean.repeat(x.shape[0] // clean.shape[0], 1, 1, 1)


def test_pixel_ssim_is_one_minus_ssim_over_two_on_the_correct_range():
    clean = _smooth_images()
    poisoned, _ = _with_patch(clean)
    loc = PixelSSIM(window=7, norm="none")
    got = loc(poisoned, clean, restore_to_clean(clean))
    s = ssim_map((poisoned + 1) / 2, (clean + 1) / 2, data_range=1.0, channel_mean=True)
    torch.testing.assert_close(got, ((1 - s) / 2).clamp(0, 1))
    assert got.shape == (3, 1, 16, 16)


def test_public_range_variant_differs_and_is_named():
    clean = _smooth_images()
    poisoned, mask = _with_patch(clean)
    paper = PixelSSIM(norm="none")(poisoned, clean, restore_to_clean(clean))
    public = PixelSSIM(norm="none", public_range=True)(poisoned, clean, restore_to_clean(clean))
    assert PixelSSIM(public_range=True).name == "ssim_public"
    assert public.max() < paper.max()  # data_range 255 squashes the map towards SSIM = 1


def test_diff_map_localises_a_patch_a_perfect_restoration_removes():
    clean = _smooth_images()
    poisoned, mask = _with_patch(clean)
    calls = []

    def restore(x, t):
        calls.append(t)
        return clean

    m = DiffMap(t_loc=120, t1=20, window=3)(poisoned, poisoned, restore)  # stage 1 kept the patch
    assert calls == [120]
    assert m.shape == (3, 1, 16, 16) and float(m.min()) == 0.0 and float(m.max()) == 1.0
    assert roc_auc(m, mask, per_image=False) > 0.95
    # t_loc == t1 reuses the stage-1 output instead of restoring again
    DiffMap(t_loc=20, t1=20)(poisoned, clean, restore)
    assert calls == [120]


def test_spread_map_is_high_where_restorations_disagree():
    clean = _smooth_images(b=2)
    _, mask = _with_patch(clean)
    g = torch.Generator().manual_seed(0)

    def restore(x, t):  # restorations agree except on the patch, where they are random
        out = clean.repeat(x.shape[0] // clean.shape[0], 1, 1, 1).clone()
        noise = torch.rand(out.shape, generator=g) * 2 - 1
        big = mask.repeat(x.shape[0] // clean.shape[0], 1, 1)[:, None].expand_as(out)
        out[big] = noise[big]
        return out

    m = SpreadMap(t_loc=50, k=4, window=1)(clean, clean, restore)
    assert roc_auc(m, mask, per_image=False) > 0.99


def test_normalise_map_modes():
    raw = torch.tensor([[[[0.0, 0.2], [0.4, 0.8]]], [[[0.1, 0.1], [0.1, 0.1]]]])
    mm = normalise_map(raw, "minmax")
    torch.testing.assert_close(mm[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.all(mm[1] == 0)  # a constant map has no suspicious region
    torch.testing.assert_close(normalise_map(raw, "scale", 0.4)[0, 0], torch.tensor([[0.0, 0.5], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="map_norm"):
        normalise_map(raw, "zscore")


def test_build_localiser_follows_profiles():
    assert build_localiser(SampDetoxConfig(profile="faithful")).name == "pixel_ssim"
    assert build_localiser(SampDetoxConfig(profile="public_code")).name == "ssim_public"
    loc = build_localiser(SampDetoxConfig(profile="faithful", localiser="spread", t_loc=60, loc_window=3))
    assert loc.name == "spread" and loc.t_loc == 60 and loc.window == 3


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, (5, 64)).astype(float)
    y = rng.random((5, 64)) < 0.3
    np.testing.assert_allclose(roc_auc(s, y), [roc_auc_score(y[i], s[i]) for i in range(5)])
    assert abs(roc_auc(s, y, per_image=False) - roc_auc_score(y.ravel(), s.ravel())) < 1e-12
    y[0] = False
    assert np.isnan(roc_auc(s, y)[0])


def test_trigger_map_quality_and_changed_pixels():
    clean = np.zeros((2, 6, 6, 3), dtype=np.uint8)
    trig = clean.copy()
    trig[:, 4:, 4:] = 255
    trig[:, 0, 0, 1] = 5  # below the tolerance: not a trigger pixel
    mask = changed_pixels(clean, trig, tolerance=8)
    assert mask.sum() == 8 and mask[:, 4:, 4:].all()
    tmap = torch.zeros(2, 1, 6, 6)
    tmap[:, :, 4:, 4:] = 0.9
    q = trigger_map_quality(tmap, (tmap * 100).round(), mask)
    assert q["map_auc"] == 1.0 and q["trigger_level"] == 90.0 and q["other_level"] == 0.0


def test_trigger_survival():
    from detoxops.defenses.map_quality import trigger_survival

    clean = np.full((3, 4, 4, 3), 100, dtype=np.uint8)
    trig = clean.copy()
    trig[:, :2, :2] = 200
    detoxed = np.stack([trig[0], clean[1], (clean[2] // 2 + trig[2] // 2)])
    np.testing.assert_allclose(trigger_survival(clean, trig, detoxed), [1.0, 0.0, 0.5])
    assert np.isnan(trigger_survival(clean, clean, clean)).all()
