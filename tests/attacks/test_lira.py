import math

import numpy as np
import pytest
import torch

from detoxops.attacks import registry
from detoxops.attacks.lira import CIFAR_STD

torch.set_num_threads(1)

FAST = {"steps": 40, "width": 8, "batch_size": 32, "classifier_width": 8, "max_train_images": 600}
TINY = {"steps": 6, "width": 4, "batch_size": 16, "classifier_width": 4, "max_train_images": 64}


@pytest.fixture(scope="module")
def fitted(fit_digits):
    return fit_digits("lira", FAST, 1000)


@pytest.fixture(scope="module")
def state_dir(fitted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lira_state")
    fitted.save_state(folder)
    return folder


def _batch(x, y):
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y)


def test_registered_as_fitted_loop_attack():
    cls = registry.get("lira")
    assert cls.name == "lira" and cls.kind == "loop" and cls.needs_fit and not cls.needs_model
    assert not cls.clean_label


def test_unfitted_raises_clearly(digits16):
    x, y = digits16
    attack = registry.create("lira", image_size=16, options=TINY)
    for call in (lambda: attack.apply_trigger(x[:2]), lambda: attack.poison_train_arrays(x[:20], y[:20]),
                 lambda: attack.batch_transform(*_batch(x[:4], y[:4])), lambda: attack.save_state("unused")):
        with pytest.raises(ValueError, match="lira"):
            call()
    with pytest.raises(ValueError, match="options.lira"):
        registry.validate_options("lira", {"epsilon": 0.1})
    with pytest.raises(ValueError, match="train_labels"):
        attack.fit(x[:10], y[:10] + 10, progress=False)


def test_perturbation_bounded_by_eps(fitted, digits16):
    x, _ = digits16
    held = x[1000:1200]
    diff = fitted.apply_trigger(held).astype(int) - held
    # eps = 0.01 normalised = 0.01 * std * 255 < 0.67 grey levels: after truncation only the sign survives
    assert fitted.linf_bound_u8() == 1 == math.ceil(0.01 * max(CIFAR_STD) * 255)
    assert set(np.unique(diff)) <= {-1, 0} and (diff == -1).any()


def test_larger_eps_same_generator(fitted, digits16, state_dir):
    x, _ = digits16
    held = x[1000:1100]
    big = registry.create("lira", image_size=16, options=FAST | {"eps": 0.2, "state_path": str(state_dir)})
    diff = big.apply_trigger(held).astype(int) - held
    with torch.no_grad():
        g = big.generator_net(torch.from_numpy(held).permute(0, 3, 1, 2).float() / 255).permute(0, 2, 3, 1).numpy()
    bound = 0.2 * np.array(CIFAR_STD) * 255  # per channel, grey levels
    assert (diff <= np.floor(bound)).all() and (diff >= -np.ceil(bound)).all()
    assert big.linf_bound_u8() == math.ceil(0.2 * 0.261 * 255) and np.abs(diff).max() > 1
    # where no clipping happens, the change is exactly trunc(x + eps * std * 255 * G(x)) - x
    inside = (held > 20) & (held < 235)
    expect = np.floor(held + bound * g + 1e-6) - held
    assert np.array_equal(diff[inside], expect[inside])


def test_trigger_is_input_dependent(fitted, digits16):
    x, _ = digits16
    held = x[1000:1100]
    with torch.no_grad():
        g = fitted.generator_net(torch.from_numpy(held).permute(0, 3, 1, 2).float() / 255)
    assert (g[0] - g[1]).abs().mean() > 1e-3
    diff = fitted.apply_trigger(held).astype(int) - held
    inner = held > 0  # zero pixels cannot go lower
    signs = [(diff[i] != diff[i + 1])[inner[i] & inner[i + 1]].mean() for i in range(0, 98, 2)]
    assert np.mean(signs) > 0.01


def test_batch_transform_relabels_exactly_the_backdoor_portion(fitted, digits16, state_dir):
    x, y = digits16
    attack = registry.create("lira", image_size=16, target=7, poison_ratio=0.25,
                             options=FAST | {"post_transform": False, "state_path": str(state_dir)})
    xb, yb = _batch(x[:32], y[:32])
    out, out_y = attack.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    nb = 8
    assert (out_y[:nb] == 7).all() and torch.equal(out_y[nb:], yb[nb:])
    assert torch.equal(out[nb:], xb[nb:])
    # quantize (default): the backdoored samples are exactly the uint8 test-time triggers
    expect = torch.from_numpy(attack.apply_trigger(x[:nb])).permute(0, 3, 1, 2).double() / 255
    assert torch.equal(out[:nb].double(), expect.float().double())
    # float mode: BackdoorBench's unquantised perturbation, bounded by eps * std per channel
    flt = registry.create("lira", image_size=16, target=7, poison_ratio=0.25,
                          options=FAST | {"post_transform": False, "quantize": False, "state_path": str(state_dir)})
    fout, _ = flt.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    bound = (0.01 * torch.tensor(CIFAR_STD)).view(1, 3, 1, 1)
    assert ((fout[:nb] - xb[:nb]).abs() <= bound + 1e-6).all() and not torch.equal(fout[:nb], xb[:nb])
    # with the PostTensorTransform: deterministic given the generator, shape and range kept
    a, ya = fitted.batch_transform(xb, yb, torch.Generator().manual_seed(3))
    b, _ = fitted.batch_transform(xb, yb, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == xb.shape and a.min() >= 0 and a.max() <= 1
    assert (ya[:3] == 0).all() and torch.equal(ya[3:], yb[3:])  # int(0.1 * 32) = 3


def test_snapshot_convention(fitted, digits16):
    x, y = digits16
    px, py, flags = fitted.poison_train_arrays(x[:300], y[:300])
    bd, cross = fitted.snapshot_indices(300)
    assert len(cross) == 0 and len(bd) == 9 * 3 + 1  # blocks of 32: 3 each, last block of 12: 1
    assert np.array_equal(np.flatnonzero(flags), bd) and (py[bd] == 0).all()
    rest = np.setdiff1d(np.arange(300), bd)
    assert np.array_equal(px[rest], x[rest]) and np.array_equal(py[rest], y[rest])
    assert np.array_equal(px[bd], fitted.apply_trigger(x[bd]))


def test_state_round_trip_is_bit_identical(fitted, digits16, state_dir):
    x, _ = digits16
    assert (state_dir / "lira_generator.safetensors").is_file()
    loaded = registry.create("lira", image_size=16, options=FAST | {"state_path": str(state_dir)})
    assert loaded.is_fitted and np.array_equal(loaded.apply_trigger(x[:50]), fitted.apply_trigger(x[:50]))
    with pytest.raises(ValueError, match="do not fit"):
        registry.create("lira", image_size=16, options={"width": 16, "state_path": str(state_dir)})


def test_deterministic_given_the_seed(fit_digits, digits16):
    x, _ = digits16

    def fitted_trigger(seed):
        return fit_digits("lira", TINY | {"eps": 0.5}, 200, seed).apply_trigger(x[300:320])

    first = fitted_trigger(0)
    assert np.array_equal(first, fitted_trigger(0))
    assert not np.array_equal(first, fitted_trigger(1))


def test_cifar_32px(cifar_small):
    xtr, ytr, xte, yte = cifar_small
    attack = registry.create("lira", image_size=32, options=TINY)
    assert attack.layers == 4  # BackdoorBench's autoencoder depth at 32 px (2x2 bottleneck)
    attack.fit(xtr, ytr, progress=False)
    images, labels, keep = attack.poison_test_arrays(xte, yte)
    diff = images.astype(int) - xte[keep]
    assert images.shape == (90, 32, 32, 3) and set(np.unique(diff)) <= {-1, 0}
    assert not np.array_equal(diff[0], diff[1])
