"""BDMAE's defining step: restoring random token masks and comparing structure and the black box's labels gives a
trigger score map that peaks on a planted patch; the purifier's inpainting keeps unmasked pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detoxops.config import BaselinesConfig, BdmaeConfig
from detoxops.defenses.bdmae import Bdmae, grid_adjacency, grow_local_region, inpaint
from detoxops.defenses.catalog import build_defense

H = 16
GRID = 4  # tokens of 4 x 4 px
PATCH = (slice(8, 12), slice(4, 8))  # exactly token (row 2, col 1) = index 9
PATCH_TOKEN = 2 * GRID + 1
TARGET = 3


def patch_classifier(images_u8: np.ndarray) -> np.ndarray:
    """TARGET when the patch is bright, else class 0."""
    patch = images_u8[:, PATCH[0], PATCH[1], :].astype(float).mean(axis=(1, 2, 3))
    return np.where(patch > 200, TARGET, 0)


def _poisoned(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.03 * torch.randn(n, 3, H, H, generator=g)
    x[:, :, PATCH[0], PATCH[1]] = 1.0
    return x.clamp(0, 1)


def _cfg(**kw):
    base = dict(grid=GRID, rp_init_in=4, rp_init_out=2, rp_refine=3, inpaint_stride=250)
    return BdmaeConfig(**{**base, **kw})


@pytest.mark.parametrize("mode", ["replace", "keep"])
def test_inpainting_restores_the_mask_and_keeps_the_rest(mode, gray_oracle):
    x = torch.rand(2, 3, H, H, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.zeros(2, 1, H, H, dtype=torch.bool)
    mask[:, :, :8] = True
    out = inpaint(gray_oracle, x, mask, 1000, 250, torch.Generator().manual_seed(2), mode)
    assert bool((out[:, :, 8:] == x[:, :, 8:]).all())
    torch.testing.assert_close(out[:, :, :8], torch.zeros_like(out[:, :, :8]), atol=1e-4, rtol=0)


def test_score_map_peaks_on_the_planted_patch_and_the_restoration_removes_it(gray_oracle):
    x = _poisoned(3)
    bdmae = Bdmae(gray_oracle, patch_classifier, _cfg(), batch_size=2)
    out = bdmae(x)
    scores = out.scores.flatten(1)  # (B, G²)
    assert scores.argmax(1).tolist() == [PATCH_TOKEN] * 3
    others = torch.cat([scores[:, :PATCH_TOKEN], scores[:, PATCH_TOKEN + 1 :]], 1)
    assert bool((scores[:, PATCH_TOKEN] > others.max(1).values + 0.1).all())
    # the patch token is restored (to the oracle's gray), so the backdoor no longer fires
    u8 = (out.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert (patch_classifier(u8) == 0).all()
    assert bool(out.restored[:, 0][:, PATCH[0], PATCH[1]].all())
    # queries: 1 + rp_init_in * rp_init_out + 2 * rp_refine per image
    assert out.queries.tolist() == [1 + 8 + 6] * 3 and bdmae.queries_total == 3 * 15
    assert out.maps["trigger_map"].shape == (3, 1, H, H)


def test_local_regions_grow_inside_the_allowed_tokens():
    adjacency = grid_adjacency(GRID)
    assert int(adjacency.sum()) == 2 * 2 * GRID * (GRID - 1)
    allowed = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    allowed[:, :8] = True  # the top two rows
    length = torch.tensor([5, 0])
    region = grow_local_region(torch.ones(2, GRID * GRID), allowed, length, adjacency, topo_po=50.0,
                               g=torch.Generator().manual_seed(3))
    assert region.sum(1).tolist() == [5.0, 0.0]
    assert bool((region[0].bool() <= allowed[0]).all())
    chosen = region[0].bool()
    # connected: every chosen token but one has a chosen neighbour
    assert int((adjacency[chosen][:, chosen].any(1)).sum()) == 5


def test_clean_image_is_barely_changed_and_catalog_needs_the_classifier(gray_oracle):
    g = torch.Generator().manual_seed(4)
    clean = (0.5 + 0.03 * torch.randn(2, 3, H, H, generator=g)).clamp(0, 1)
    out = Bdmae(gray_oracle, patch_classifier, _cfg())(clean)
    assert float(out.restored.float().mean()) <= 0.25 + 1e-6  # at most max_restore_fraction of the tokens
    with pytest.raises(ValueError, match="classifier"):
        build_defense("bdmae", gray_oracle)
    built = build_defense("bdmae", gray_oracle, classifier=patch_classifier, baselines=BaselinesConfig(bdmae=_cfg()))
    assert isinstance(built, Bdmae) and built.cfg.grid == GRID and built.level == 1000
