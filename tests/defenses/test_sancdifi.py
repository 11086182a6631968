"""Sancdifi's defining step: the RISE saliency of a black box that keys on a planted patch concentrates on the
patch, the salient pixels are the ones diffused hardest, and the queries are counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detoxops.config import BaselinesConfig, SancdifiConfig
from detoxops.defenses.catalog import build_defense
from detoxops.defenses.sancdifi import BlackBox, Sancdifi, rise_masks, rise_saliency, salient_mask

H = 16
PATCH = (slice(10, 14), slice(10, 14))  # rows, cols of the planted 4x4 patch
TARGET = 7


def patch_classifier(images_u8: np.ndarray) -> np.ndarray:
    """A black box with a backdoor: TARGET when the patch is bright, else the class coded by the image's mean."""
    patch = images_u8[:, PATCH[0], PATCH[1], :].astype(float).mean(axis=(1, 2, 3))
    other = (images_u8.astype(float).mean(axis=(1, 2, 3)) // 40).astype(np.int64) % 5
    return np.where(patch > 200, TARGET, other)


def _images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = 0.2 + 0.2 * torch.rand(n, 3, H, H, generator=g)
    poisoned = clean.clone()
    poisoned[:, :, PATCH[0], PATCH[1]] = 1.0
    return clean, poisoned


def _cfg(**kw):
    base = dict(n_masks=400, mask_grid=4, threshold=0.95, t_salient=300, t_rest=0, sampler="ddim", ddim_stride=50,
                query_batch=1000)
    return SancdifiConfig(**{**base, **kw})


def test_rise_masks_are_smooth_random_occlusions():
    m = rise_masks(500, (H, H), grid=4, keep_prob=0.5, generator=torch.Generator().manual_seed(0))
    assert m.shape == (500, H, H) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert abs(float(m.mean()) - 0.5) < 0.05  # E[M] = p
    assert len({tuple(x.flatten().tolist()) for x in m[:50]}) >= 45  # (almost) all different


def test_saliency_concentrates_on_the_planted_patch_and_queries_are_counted(gray_oracle):
    _, poisoned = _images(3)
    sancdifi = Sancdifi(gray_oracle, patch_classifier, _cfg(), batch_size=2)
    out = sancdifi(poisoned)
    inside = torch.zeros(H, H, dtype=torch.bool)
    inside[PATCH] = True
    sal = out.saliency[:, 0]
    assert bool((sal[:, inside].mean(1) > 3 * sal[:, ~inside].mean(1)).all())
    salient = out.salient[:, 0]
    assert bool(salient.any(dim=(1, 2)).all())
    precision = (salient & inside).sum() / salient.sum()
    assert float(precision) >= 0.9, float(precision)
    # per-pixel levels: t_salient on the mask, t_rest (0) elsewhere; untouched pixels exactly kept
    assert set(out.noise_levels[out.salient].unique().tolist()) == {300}
    assert bool((out.images[:, :, ~inside] == poisoned[:, :, ~inside]).all())
    # the salient pixels were restored from level 300 by the (exact) oracle: they are its mid-gray now
    restored = out.images.permute(0, 2, 3, 1)[salient]
    torch.testing.assert_close(restored, torch.full_like(restored, 0.5), atol=1e-4, rtol=0)
    # one query for the prediction, one per RISE mask, per image
    assert out.queries.tolist() == [401, 401, 401] and sancdifi.queries_total == 3 * 401
    assert out.maps["trigger_map"].shape == (3, 1, H, H)


def test_rise_saliency_is_the_hit_weighted_mask_mean():
    clean, _ = _images(2)
    masks = rise_masks(64, (H, H), grid=4, keep_prob=0.5, generator=torch.Generator().manual_seed(1))
    constant = BlackBox(lambda u8: np.zeros(len(u8), dtype=np.int64))
    sal = rise_saliency(clean, torch.zeros(2, dtype=torch.long), masks, 0.5, constant, query_batch=50)
    torch.testing.assert_close(sal, (masks.mean(0) / 0.5).expand(2, 1, H, H))  # every mask a hit: E[M] / p
    assert constant.queries == 2 * 64
    never = rise_saliency(clean, torch.ones(2, dtype=torch.long), masks, 0.5, constant, query_batch=50)
    assert bool((never == 0).all())
    # a flat map (no mask changed the answer) has no salient pixel
    norm, mask = salient_mask(torch.ones(1, 1, 4, 4), 0.95)
    assert not bool(mask.any()) and bool((norm == 0).all())


def test_deterministic_and_validated(gray_oracle):
    _, poisoned = _images(2)
    a = Sancdifi(gray_oracle, patch_classifier, _cfg(t_rest=20), seed=3)(poisoned)
    b = Sancdifi(gray_oracle, patch_classifier, _cfg(t_rest=20), seed=3)(poisoned)
    torch.testing.assert_close(a.saliency, b.saliency)
    torch.testing.assert_close(a.images, b.images)
    with pytest.raises(ValueError, match="t_salient = 5000"):
        Sancdifi(gray_oracle, patch_classifier, _cfg(t_salient=5000))
    with pytest.raises(ValueError, match="classifier"):
        build_defense("sancdifi", gray_oracle)
    built = build_defense("sancdifi", gray_oracle, classifier=patch_classifier,
                          baselines=BaselinesConfig(sancdifi=_cfg(n_masks=10), batch_size=3))
    assert isinstance(built, Sancdifi) and built.cfg.n_masks == 10 and built.batch_size == 3
