import numpy as np

from detoxops.attacks import registry
from detoxops.attacks.substitutes import cartoon_blend_pattern


def test_blend_formula_and_alpha_on_cifar(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("blended")
    p = attack.apply_trigger(x)
    t = cartoon_blend_pattern(32).astype(np.float64)
    expected = np.clip(0.8 * x + 0.2 * t, 0, 255).astype(np.uint8)  # truncation, not rounding
    assert np.array_equal(p, expected)
    # alpha recovered by least squares from the images alone: p - x = alpha (t - x) up to < 1 level truncation
    d, g = p.astype(np.float64) - x, t[None] - x
    alpha_hat = float((d * g).sum() / (g * g).sum())
    assert abs(alpha_hat - 0.2) < 0.01
    # BackdoorBench's measured L-inf on CIFAR-10 is 49/51 on average (attack spec §1.8): same role and scale
    linf = np.abs(d).max(axis=(1, 2, 3))
    assert 40 <= linf.mean() <= 51 and linf.max() <= 51


def test_test_alpha_and_user_pattern(tmp_path, cifar_small):
    from PIL import Image

    _, _, x, y = cifar_small
    Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8)).save(tmp_path / "p.jpg")
    attack = registry.create("blended", options={"pattern_path": str(tmp_path / "p.jpg"),
                                                 "alpha": 0.1, "test_alpha": 0.5})
    train_p = attack.apply_trigger(x[:3])
    assert np.array_equal(train_p, np.clip(0.9 * x[:3] + 0.1 * attack.pattern, 0, 255).astype(np.uint8))
    test_p, true, keep = attack.poison_test_arrays(x, y)
    assert np.array_equal(test_p, np.clip(0.5 * x[keep] + 0.5 * attack.pattern, 0, 255).astype(np.uint8))
    assert abs(int(attack.pattern.mean()) - 200) <= 1
