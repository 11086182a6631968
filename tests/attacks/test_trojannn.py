import numpy as np
import pytest
import torch

from detoxops.attacks import registry
from detoxops.attacks.trojannn import apple_mask_image
from detoxops.models import build_classifier


@pytest.fixture(scope="module")
def surrogate(cifar_small):
    """A small CNN trained 20 full-batch Adam steps on the 200 CIFAR images (deterministic, ~2 s)."""
    x, y, _, _ = cifar_small
    torch.manual_seed(0)
    model = build_classifier("small_cnn", num_classes=10, image_size=32, width=8, seed=0)
    xt, yt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def _fit(model, **opts):
    attack = registry.create("trojannn", options={"iters": 60, **opts})
    attack.fit(model=model, progress=False)
    return attack


def test_apple_mask_placement():
    m = apple_mask_image(32)
    region = m[..., 0] > 0
    rows, cols = np.nonzero(region)
    assert 0.08 < region.mean() < 0.13  # spec: about 10 % of the pixels
    assert 15 <= rows.min() and rows.max() <= 30 and 17 <= cols.min() and cols.max() <= 29  # lower right
    assert (m[..., 0] > 127).sum() > 0.5 * region.sum()  # a white silhouette, grey at the anti-aliased edge
    assert 0.08 < (apple_mask_image(16)[..., 0] > 0).mean() < 0.2


def test_optimised_trigger_drives_selected_neurons(surrogate, cifar_small):
    attack = _fit(surrogate)
    trig = attack.trigger
    assert trig.shape == (32, 32, 3) and trig.dtype == np.uint8
    assert not trig[~attack.region].any() and trig[attack.region].any()  # confined to the mask
    assert len(attack.neurons) == 2 and attack.fit_report["iterations"] == 60
    # in-mask values stay within eps = 0.3 (76.5 grey levels) of the resized mask image
    assert np.abs(trig.astype(int) - attack.mask_image.astype(int))[attack.region].max() <= 77
    black = attack.neuron_activations(surrogate, np.zeros((1, 32, 32, 3), np.uint8)).sum()
    gain = attack.neuron_activations(surrogate, trig[None]).sum() - black
    rng = np.random.default_rng(1)
    random_triggers = (rng.integers(0, 256, (30, 32, 32, 3)) * attack.region[None, :, :, None]).astype(np.uint8)
    random_gain = attack.neuron_activations(surrogate, random_triggers).sum(1) - black
    assert gain > 3 * max(random_gain.mean(), 0) and gain > random_gain.max()


def test_trigger_added_modulo_256_only_in_mask(surrogate, cifar_small):
    _, _, x, y = cifar_small
    attack = _fit(surrogate, iters=5)
    before = x.copy()
    out = attack.apply_trigger(x)
    assert np.array_equal(x, before) and out.dtype == np.uint8
    assert np.array_equal(out, ((x.astype(int) + attack.trigger[None]) % 256).astype(np.uint8))  # wraps, no clip
    changed = np.any(out != x, axis=-1)
    assert not (changed & ~attack.region[None]).any()  # confined to the mask region
    assert (x.astype(int) + attack.trigger[None] > 255).any()  # the wrap case is exercised
    assert not (changed & ~attack.trigger_mask(x)).any()
    images, labels, keep = attack.poison_test_arrays(x, y)
    assert (labels != 0).all() and len(keep) == 90 and np.array_equal(images, out[keep])


def test_dirty_label_poisoning(surrogate, cifar_small):
    x, y, _, _ = cifar_small
    attack = _fit(surrogate, iters=5)
    images, labels, flags = attack.poison_train_arrays(x, y)
    assert flags.sum() == 20 and (labels[flags] == 0).all() and np.array_equal(labels[~flags], y[~flags])
    assert np.array_equal(images[flags], attack.apply_trigger(x[flags]))


def test_deterministic_and_state_round_trip(tmp_path, surrogate):
    a, b = _fit(surrogate, iters=30), _fit(surrogate, iters=30)
    assert a.neurons == b.neurons and np.array_equal(a.trigger, b.trigger)
    c = registry.create("trojannn", seed=5, options={"iters": 30})
    c.fit(model=surrogate, progress=False)
    assert c.neurons != a.neurons  # the seed draws the neurons (BackdoorBench: effectively random)
    files = a.save_state(tmp_path / "state")
    loaded = registry.create("trojannn")
    loaded.load_state(tmp_path / "state")
    assert loaded.is_fitted and np.array_equal(loaded.trigger, a.trigger)
    assert loaded.trigger.tobytes() == a.trigger.tobytes()
    ready = registry.create("trojannn", options={"trigger_path": str(files[0])})
    ready.fit()  # nothing to fit
    assert np.array_equal(ready.trigger, a.trigger)


def test_neuron_options_and_errors(surrogate, digits16):
    x, _ = digits16
    explicit = _fit(surrogate, iters=3, neurons=[124, 127])
    assert explicit.neurons == [124, 127]
    by_weight = _fit(surrogate, iters=3, neuron_selection="weight")
    w = surrogate.head.weight.detach().abs().sum(0)
    assert sorted(by_weight.neurons) == sorted(torch.topk(w, 2).indices.tolist())
    with pytest.raises(ValueError, match="inputs"):
        _fit(surrogate, iters=3, neurons=[999])
    with pytest.raises(ValueError, match="no layer"):
        _fit(surrogate, iters=3, layer="linear")
    with pytest.raises(ValueError, match="surrogate classifier"):
        registry.create("trojannn").fit()
    with pytest.raises(ValueError, match="no trigger"):
        registry.create("trojannn", image_size=16).apply_trigger(x[:2])
    with pytest.raises(ValueError, match="options.trojannn"):
        registry.validate_options("trojannn", {"num_neuron": 2})
    # 16 px digits with a 16 px surrogate (no training needed for the shape properties)
    small = build_classifier("small_cnn", num_classes=10, image_size=16, width=8).eval()
    attack = registry.create("trojannn", image_size=16, options={"iters": 5})
    attack.fit(model=small, progress=False)
    out = attack.apply_trigger(x[:10])
    assert out.shape == (10, 16, 16, 3) and not (np.any(out != x[:10], -1) & ~attack.region[None]).any()
