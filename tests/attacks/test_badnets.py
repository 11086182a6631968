import numpy as np
import pytest

from detoxops.attacks import registry


def test_white_patch_pixels_exact_on_cifar(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("badnets")
    p = attack.apply_trigger(x)
    # BackdoorBench's trigger: 3x3 pure white at rows/cols 29-31, everything else untouched
    assert (p[:, 29:32, 29:32] == 255).all()
    outside = np.ones((32, 32), dtype=bool)
    outside[29:32, 29:32] = False
    assert np.array_equal(p[:, outside], x[:, outside])
    mask = attack.trigger_mask(x)
    assert mask.shape == (len(x), 32, 32) and mask[:, 29:32, 29:32].all() and not mask[:, outside].any()
    assert not np.shares_memory(p, x)


@pytest.mark.parametrize(("size", "side"), [(16, 2), (32, 3), (64, 6)])
def test_patch_scales_with_image_size(size, side):
    attack = registry.create("badnets", image_size=size)
    x = np.zeros((2, size, size, 3), dtype=np.uint8)
    region = attack.trigger_mask(x)[0]
    rows, cols = np.nonzero(region)
    assert region.sum() == side * side
    assert rows.max() == size - 1 and cols.max() == size - 1  # bottom-right, no margin


def test_margin_and_dataelixir_pattern(cifar_small):
    _, _, x, _ = cifar_small
    p = registry.create("badnets", options={"margin": 1}).apply_trigger(x)
    assert (p[:, 28:31, 28:31] == 255).all() and np.array_equal(p[:, 31], x[:, 31])
    de = registry.create("badnets", options={"pattern": "dataelixir"}).apply_trigger(x)
    # quadrants yellow / magenta / cyan / grey; a 0 channel keeps the image (paste rule: trigger > 0 wins)
    assert (de[:, 28:30, 28:30, :2] == 255).all()
    assert np.array_equal(de[:, 28:30, 28:30, 2], x[:, 28:30, 28:30, 2])
    assert (de[:, 28:30, 30:32, [0, 2]] == 255).all()
    assert np.array_equal(de[:, 28:30, 30:32, 1], x[:, 28:30, 30:32, 1])
    assert (de[:, 30:32, 28:30, 1:] == 255).all()
    assert (de[:, 30:32, 30:32] == 122).all()


def test_user_trigger_file(tmp_path, digits16):
    from PIL import Image

    trig = np.zeros((16, 16, 3), dtype=np.uint8)
    trig[0, 0] = (10, 0, 200)
    Image.fromarray(trig).save(tmp_path / "t.png")
    x, _ = digits16
    p = registry.create("badnets", image_size=16, options={"trigger_path": str(tmp_path / "t.png")}).apply_trigger(x[:5])
    assert (p[:, 0, 0, 0] == 10).all() and (p[:, 0, 0, 2] == 200).all()
    assert np.array_equal(p[:, 0, 0, 1], x[:5, 0, 0, 1])  # a zero trigger channel keeps the image
    assert np.array_equal(p[:, 1:], x[:5, 1:])


def test_dirty_label_poisoning_ratio_and_targets(cifar_small):
    x, y, _, _ = cifar_small
    attack = registry.create("badnets", target=3, seed=1)
    px, py, flags = attack.poison_train_arrays(x, y)
    assert flags.sum() == round(0.1 * len(y))
    assert (py[flags] == 3).all() and np.array_equal(py[~flags], y[~flags])
    assert (px[flags][:, 29:, 29:] == 255).all() and np.array_equal(px[~flags], x[~flags])


def test_wrong_input_is_rejected():
    attack = registry.create("badnets")
    with pytest.raises(ValueError, match="32x32"):
        attack.apply_trigger(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        attack.apply_trigger(np.zeros((1, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="exceeds"):
        registry.create("badnets", image_size=8, options={"patch_size": 8, "margin": 1})
