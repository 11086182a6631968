import numpy as np
import pytest
from PIL import Image

from detoxops.attacks import registry


def _linear(u8):
    return (u8.astype(np.float64) / 255) ** 2.2


def test_black_reflections_leave_the_alpha_t_transmission(tmp_path, cifar_small):
    _, _, x, _ = cifar_small
    for k in range(3):
        Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / f"r{k}.png")
    attack = registry.create("refool", options={"reflection_dir": str(tmp_path)})
    assert attack.pool.shape == (3, 32, 32, 3)
    p = attack.apply_trigger(x)
    expected = 0.4 ** (1 / 2.2) * x.astype(np.float64)  # (0.4 t^2.2)^(1/2.2), both branches
    assert np.abs(p - np.floor(expected)).max() <= 1


def test_blend_range_on_cifar(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("refool")
    p = attack.apply_trigger(x)
    # in linear light the output is 0.4 t' + a reflection in [0, 0.8] (ghost <= 0.6, focal <= 0.8 G)
    reflection = _linear(p) - 0.4 * _linear(x)
    unclipped = p < 255
    assert reflection[unclipped].min() > -0.01  # truncation of the output only
    assert reflection.max() <= 0.8 + 1e-9
    assert reflection.mean() > 0.02
    assert np.array_equal(attack.apply_trigger(x), p)  # deterministic


def test_branch_rates_and_focal_centre(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("refool")
    draw = attack._draw(4000, np.random.default_rng(0))
    assert abs(draw["ghost"].mean() - 0.49) < 0.03
    assert draw["offset"].min() >= 3 and draw["offset"].max() <= 8
    assert (draw["sigma"] >= 1).all() and (draw["sigma"] <= 5).all()
    ga = draw["ghost_alpha"]
    assert ga.min() >= 0.15 - 1e-12 and ga.max() <= 0.85 + 1e-12  # |round(U) - U[0.15, 0.5]|
    focal = registry.create("refool", options={"ghost_rate": 0.0})
    refl = _linear(focal.apply_trigger(x)) - 0.4 * _linear(x)
    centre = refl[:, 12:20, 12:20].mean()
    corner = refl[:, :4, :4].mean()
    assert centre > 5 * max(corner, 1e-6)  # the Gaussian mask keeps the reflection near the centre


def test_ghost_branch_with_fixed_parameters(cifar_small):
    _, _, x, _ = cifar_small
    ghost = registry.create("refool", options={"ghost_rate": 1.0, "offset": (4, 4), "ghost_alpha": 0.5})
    p = ghost.apply_trigger(x)
    refl = _linear(p) - 0.4 * _linear(x)
    assert refl.max() <= 0.6 + 1e-9 and refl.mean() > 0.02


def test_scaled_and_bad_folder(digits16, tmp_path):
    attack = registry.create("refool", image_size=16)
    assert attack.pool.shape == (200, 16, 16, 3)
    draw = attack._draw(500, np.random.default_rng(0))
    assert draw["offset"].min() >= 2 and draw["offset"].max() <= 4
    with pytest.raises(ValueError, match="no images"):
        registry.create("refool", options={"reflection_dir": str(tmp_path)})
