import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detoxops.attacks import registry


def test_identity_warp_at_s0_on_cifar(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("wanet", options={"s": 0.0})
    assert torch.equal(attack.warp_grid(), attack.identity_grid)
    assert np.array_equal(attack.apply_trigger(x), x)


@pytest.mark.parametrize("seed", range(5))
def test_bound_at_s_half(cifar_small, seed):
    _, _, x, _ = cifar_small
    attack = registry.create("wanet", seed=seed)
    disp = attack.displacement_px()
    # |U| is normalised to mean 1 over the 4x4 control grid; at s = 0.5 every pixel moves by < 1 px
    assert disp.abs().max() < 1.0 and disp.abs().max() > 0.05
    # so every warped pixel lies within the value range of its 3x3 neighbourhood in the clean image
    p = attack.apply_trigger(x).astype(int)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    hi = F.max_pool2d(xt, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    lo = -F.max_pool2d(-xt, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    assert (p <= hi).all() and (p >= lo - 1).all()  # -1: truncation
    assert not np.array_equal(p, x)


def test_displacement_is_linear_in_s():
    half = registry.create("wanet", options={"s": 0.5}).displacement_px()
    quarter = registry.create("wanet", options={"s": 0.25}).displacement_px()
    inner = (slice(2, -2), slice(2, -2))  # away from the border clamp
    assert torch.allclose(half[inner], 2 * quarter[inner], atol=1e-12)


def test_matches_backdoorbench_float_path(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("wanet")
    x01 = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    ref = F.grid_sample(x01, attack.warp_grid().float().expand(len(x), -1, -1, -1), align_corners=True)
    ref_u8 = (ref * 255).permute(0, 2, 3, 1).numpy().astype(np.uint8)  # ToPILImage: x255 then truncate
    assert np.abs(attack.apply_trigger(x).astype(int) - ref_u8).max() <= 1


def test_batch_transform_layout(cifar_small):
    x, y, _, _ = cifar_small
    attack = registry.create("wanet", target=2, options={"post_transform": False})
    xb = torch.from_numpy(x[:128]).permute(0, 3, 1, 2).float() / 255
    yb = torch.from_numpy(y[:128])
    out, out_y = attack.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    warped = F.grid_sample(xb[:12], attack.warp_grid().float().expand(12, -1, -1, -1), align_corners=True)
    assert torch.allclose(out[:12], warped, atol=1e-6) and (out_y[:12] == 2).all()
    # 24 noise-mode samples: changed, true labels, different from the plain warp
    noise = out[12:36]
    plain = F.grid_sample(xb[12:36], attack.warp_grid().float().expand(24, -1, -1, -1), align_corners=True)
    assert not torch.allclose(noise, plain) and torch.equal(out_y[12:], yb[12:])
    assert torch.equal(out[36:], xb[36:])
    again, _ = attack.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)  # deterministic given the generator


def test_post_transform_keeps_shape_and_range(cifar_small):
    x, y, _, _ = cifar_small
    attack = registry.create("wanet")
    xb = torch.from_numpy(x[:64]).permute(0, 3, 1, 2).float() / 255
    out, _ = attack.batch_transform(xb, torch.from_numpy(y[:64]), torch.Generator().manual_seed(3))
    assert out.shape == xb.shape and out.min() >= 0 and out.max() <= 1


def test_snapshot_convention_and_ratio():
    attack = registry.create("wanet")
    bd, cross = attack.snapshot_indices(50000)
    # 390 full blocks of 128 (12 + 24) and a last block of 80 (8 + 16), as BackdoorBench's bd_train
    assert len(bd) == 390 * 12 + 8 and len(cross) == 390 * 24 + 16
    assert bd[:12].tolist() == list(range(12)) and cross[:24].tolist() == list(range(12, 36))
    assert bd[-8:].tolist() == list(range(49920, 49928))
    labels = np.arange(300) % 10
    x = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    px, py, flags = attack.poison_train_arrays(x, labels)
    bd, cross = attack.snapshot_indices(300)
    assert np.array_equal(np.flatnonzero(flags), bd) and (py[bd] == 0).all()
    assert np.array_equal(py[cross], labels[cross]) and not np.array_equal(px[cross], x[cross])


def test_wrong_batch_size_rejected():
    attack = registry.create("wanet", image_size=16)
    with pytest.raises(ValueError, match="16x16"):
        attack.batch_transform(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(("ratio", "b"), [(0.1, 128), (0.003, 64), (0.5, 3)])
def test_loop_batch_helpers_draw_like_the_inline_rule(ratio, b):
    """batch_counts / batch_donors make the same draws, in the same order, as the rule they replaced."""
    from detoxops.attacks.loop import batch_counts, batch_donors, uniform

    g, ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(30):
        nb, nc = batch_counts(b, ratio, g, lambda _n, ln: int(ln * 0.2))
        expected = ratio * b
        nb_ref = int(expected) if expected >= 1 else int(uniform(ref, 0, 1) < expected)
        assert (nb, nc) == (nb_ref, min(int(b * 0.2), b - nb_ref))
        if nc:
            donors = batch_donors(nb, nc, b, g, "cpu")
            shift = torch.randint(1, b, (nc,), generator=ref)
            positions = torch.arange(nb, nb + nc)
            assert torch.equal(donors, (positions + shift) % b) and not (donors == positions).any()
    assert torch.equal(g.get_state(), ref.get_state())


def test_without_post_transform_the_victims_own_augmentation_applies():
    assert registry.create("wanet").replaces_augmentation is True  # BackdoorBench: crop / rotation / flip
    assert registry.create("wanet", options={"post_transform": False}).replaces_augmentation is False
