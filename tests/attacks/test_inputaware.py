import numpy as np
import pytest
import torch

from detoxops.attacks import registry

torch.set_num_threads(1)

FAST = {"mask_steps": 60, "steps": 40, "width": 8, "batch_size": 32, "classifier_width": 8,
        "max_train_images": 600}
TINY = {"mask_steps": 6, "steps": 6, "width": 4, "batch_size": 16, "classifier_width": 4, "max_train_images": 64}


@pytest.fixture(scope="module")
def fitted(fit_digits):
    return fit_digits("inputaware", FAST, 1000)


def _batch(x, y):
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y)


def test_registered_as_fitted_loop_attack():
    cls = registry.get("inputaware")
    assert cls.name == "inputaware" and cls.kind == "loop" and cls.needs_fit and not cls.needs_model
    assert not cls.clean_label and cls.replaces_augmentation


def test_unfitted_raises_clearly(digits16):
    x, y = digits16
    attack = registry.create("inputaware", image_size=16, options=TINY)
    assert not attack.is_fitted
    for call in (lambda: attack.apply_trigger(x[:2]), lambda: attack.poison_train_arrays(x[:20], y[:20]),
                 lambda: attack.batch_transform(*_batch(x[:4], y[:4])), lambda: attack.save_state("unused")):
        with pytest.raises(ValueError, match="inputaware"):
            call()


def test_bad_options_and_inputs(digits16):
    x, y = digits16
    with pytest.raises(ValueError, match="options.inputaware"):
        registry.validate_options("inputaware", {"mask_densty": 0.1})
    with pytest.raises(ValueError, match="divisible"):
        registry.create("inputaware", image_size=20, options={"levels": 3})
    attack = registry.create("inputaware", image_size=16, options=TINY)
    with pytest.raises(ValueError, match="train_labels"):
        attack.fit(x[:10], y[:9], progress=False)
    with pytest.raises(ValueError, match="16x16"):
        attack.fit(np.zeros((4, 32, 32, 3), np.uint8), y[:4], progress=False)


def test_trigger_is_input_dependent(fitted, digits16):
    x, _ = digits16
    held = x[1000:1100]
    p = fitted.apply_trigger(held)
    assert p.dtype == np.uint8 and p.shape == held.shape
    diff = p.astype(int) - held
    masks = fitted.trigger_mask(held)
    # different images get different masks and different patterns
    assert np.mean([(masks[i] != masks[i + 1]).mean() for i in range(0, 98, 2)]) > 0.005
    pattern = fitted.pattern_net(torch.from_numpy(held[:8]).permute(0, 3, 1, 2).float() / 255).detach()
    assert (pattern[0] - pattern[1]).abs().mean() > 1e-3
    assert np.abs(diff).max() > 30 and not np.array_equal(diff[0], diff[1])


def test_mask_confines_the_change_and_density(fitted, digits16):
    x, _ = digits16
    held = x[1000:1100]
    diff = np.abs(fitted.apply_trigger(held).astype(int) - held).max(-1)
    with torch.no_grad():
        m = fitted.masks01(torch.from_numpy(held).permute(0, 3, 1, 2).float() / 255)[:, 0].numpy()
    # |x_bd - x| = m(x) * |G(x) - x| <= 255 m(x), plus one level of truncation
    assert (diff <= np.ceil(255 * m) + 1).all()
    # the binarised mask covers about mask_density = 0.032 of the pixels, and the big changes sit inside it
    frac = fitted.trigger_mask(held).mean()
    assert 0.005 < frac < 0.1
    assert 0.005 < fitted.fit_report["mask_fraction"] < 0.1
    assert (diff > 128).mean() <= frac


def test_cross_samples_use_the_donors_trigger(fitted, digits16):
    x, _ = digits16
    a, d = x[1000:1010], x[1010:1020]
    assert np.array_equal(fitted.apply_cross(a, a), fitted.apply_trigger(a))
    cross = fitted.apply_cross(a, d)
    with torch.no_grad():
        m = fitted.masks01(torch.from_numpy(d).permute(0, 3, 1, 2).float() / 255)[:, 0].numpy()
    assert (np.abs(cross.astype(int) - a).max(-1) <= np.ceil(255 * m) + 1).all()
    assert not np.array_equal(cross, fitted.apply_trigger(a))


def test_batch_transform_layout(fitted, digits16):
    x, y = digits16
    attack = registry.create("inputaware", image_size=16, target=3, options=FAST | {"augment": False})
    attack.pattern_net.load_state_dict(fitted.pattern_net.state_dict())
    attack.mask_net.load_state_dict(fitted.mask_net.state_dict())
    attack._fitted = True
    xb, yb = _batch(x[:64], y[:64])
    out, out_y = attack.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    nb = int(0.1 * 64)  # 6 backdoored, then 6 cross samples, then clean
    with torch.no_grad():
        own = attack.poison01(xb[:nb]).clamp(0, 1)
    assert torch.allclose(out[:nb], own, atol=1e-6) and (out_y[:nb] == 3).all()
    assert torch.equal(out_y[nb:], yb[nb:])  # cross samples keep their true labels
    cross = out[nb : 2 * nb]
    with torch.no_grad():
        own_cross = attack.poison01(xb[nb : 2 * nb]).clamp(0, 1)
    assert not torch.equal(cross, xb[nb : 2 * nb]) and not torch.allclose(cross, own_cross)
    assert torch.equal(out[2 * nb :], xb[2 * nb :])
    again, _ = attack.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)
    # with the default augmentation (crop + flip before poisoning) shape and range hold
    aug, _ = fitted.batch_transform(xb, yb, torch.Generator().manual_seed(1))
    assert aug.shape == xb.shape and aug.min() >= 0 and aug.max() <= 1


def test_snapshot_convention(fitted, digits16):
    x, y = digits16
    px, py, flags = fitted.poison_train_arrays(x[:300], y[:300])
    bd, cross = fitted.snapshot_indices(300)
    # blocks of batch_size 32: 9 full blocks with 3 + 3, a last block of 12 with 1 + 1
    assert len(bd) == 9 * 3 + 1 and len(cross) == 9 * 3 + 1
    assert bd[:3].tolist() == [0, 1, 2] and cross[:3].tolist() == [3, 4, 5] and bd[-1] == 288
    assert np.array_equal(np.flatnonzero(flags), bd) and (py[bd] == 0).all()
    assert np.array_equal(py[cross], y[:300][cross]) and not np.array_equal(px[cross], x[cross])
    untouched = np.setdiff1d(np.arange(300), np.concatenate([bd, cross]))
    assert np.array_equal(px[untouched], x[untouched]) and np.array_equal(py[untouched], y[untouched])
    assert np.array_equal(px[bd], fitted.apply_trigger(x[bd]))


def test_state_round_trip_is_bit_identical(fitted, digits16, tmp_path):
    x, y = digits16
    files = fitted.save_state(tmp_path)
    assert [f.name for f in files] == ["inputaware_generators.safetensors"]
    loaded = registry.create("inputaware", image_size=16, options=FAST | {"state_path": str(tmp_path)})
    assert loaded.is_fitted
    assert np.array_equal(loaded.apply_trigger(x[:50]), fitted.apply_trigger(x[:50]))
    xb, yb = _batch(x[:32], y[:32])
    a, _ = loaded.batch_transform(xb, yb, torch.Generator().manual_seed(5))
    b, _ = fitted.batch_transform(xb, yb, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="do not fit"):
        registry.create("inputaware", image_size=16, options={"width": 16, "state_path": str(tmp_path)})
    with pytest.raises(FileNotFoundError):
        registry.create("inputaware", image_size=16, options={"state_path": str(tmp_path / "missing")})


def test_deterministic_given_the_seed(fit_digits, digits16):
    x, _ = digits16

    def fitted_trigger(seed):
        return fit_digits("inputaware", TINY, 200, seed).apply_trigger(x[300:320])

    first = fitted_trigger(0)
    assert np.array_equal(first, fitted_trigger(0))
    assert not np.array_equal(first, fitted_trigger(1))


def test_cifar_32px(cifar_small):
    xtr, ytr, xte, yte = cifar_small
    attack = registry.create("inputaware", image_size=32, options=TINY)
    assert attack.levels == 3  # BackdoorBench's depth at 32 px (4x4 bottleneck)
    attack.fit(xtr, ytr, progress=False)
    images, labels, keep = attack.poison_test_arrays(xte, yte)
    assert images.shape == (90, 32, 32, 3) and (labels != 0).all()
    diff = images.astype(int) - xte[keep]
    assert not np.array_equal(diff[0], diff[1]) and np.abs(diff).max() > 0
