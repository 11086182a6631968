import numpy as np
import torch

from detoxops.attacks import registry


def test_eight_levels_on_cifar(cifar_small):
    _, _, x, _ = cifar_small
    p = registry.create("bpp").apply_trigger(x)
    allowed = np.floor(np.arange(8) * 255 / 7).astype(np.uint8)  # trunc(k * 255 / 7), k = 0..7
    assert set(np.unique(p)) <= set(allowed)
    # every pixel goes to its nearest level
    nearest = allowed[np.rint(x.astype(np.float64) * 7 / 255).astype(int)]
    assert np.array_equal(p, nearest)
    assert np.abs(p.astype(int) - x).max() <= 19  # half a level step: 255/14 ≈ 18.2, plus truncation


def test_batch_transform_matches_bb_formula_and_labels(cifar_small):
    x, y, _, _ = cifar_small
    attack = registry.create("bpp", options={"post_transform": False})
    xb = torch.from_numpy(x[:128]).permute(0, 3, 1, 2).float() / 255
    yb = torch.from_numpy(y[:128])
    out, out_y = attack.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    q = torch.round(torch.round(xb[:12] * 255) / 255 * 7) / 7
    assert torch.allclose(out[:12], q)
    assert (out_y[:12] == 0).all() and torch.equal(out_y[12:], yb[12:])
    # negatives: x + (Q(x_r) - x_r) for another image r keeps the label, stays within [0, 1]
    residual = out[12:24] - xb[12:24]
    assert residual.abs().max() <= 0.5 / 7 + 1e-6 and not torch.equal(out[12:24], xb[12:24])
    assert torch.equal(out[24:], xb[24:])


def test_snapshot_convention():
    attack = registry.create("bpp")
    labels = np.arange(300) % 10
    x = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    px, py, flags = attack.poison_train_arrays(x, labels)
    bd, neg = attack.snapshot_indices(300)
    # blocks [0,128), [128,256), [256,300): 12 + 12, 12 + 12, 4 + 4
    assert bd.tolist() == list(range(12)) + list(range(128, 140)) + list(range(256, 260))
    assert neg.tolist() == list(range(12, 24)) + list(range(140, 152)) + list(range(260, 264))
    assert np.array_equal(np.flatnonzero(flags), bd) and (py[bd] == 0).all()
    assert np.array_equal(py[neg], labels[neg]) and not np.array_equal(px[neg], x[neg])
    untouched = np.setdiff1d(np.arange(300), np.concatenate([bd, neg]))
    assert np.array_equal(px[untouched], x[untouched])


def test_dithering_uses_same_levels(digits16):
    x, _ = digits16
    p = registry.create("bpp", image_size=16, options={"dithering": True}).apply_trigger(x[:4])
    assert set(np.unique(p)) <= set(np.floor(np.arange(8) * 255 / 7).astype(np.uint8))
