import numpy as np
import pytest

from detoxops.attacks import registry


def test_patch_is_badnets_square_at_a_content_seeded_position(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("badnets_random", seed=3)
    p = attack.apply_trigger(x)
    mask = attack.trigger_mask(x)
    assert mask.shape == (len(x), 32, 32)
    assert (mask.reshape(len(x), -1).sum(1) == 9).all()  # one 3x3 square per image
    assert (p[mask] == 255).all() and np.array_equal(p[~mask], x[~mask])
    # positions spread over the image (100 images, 900 possible positions), not the BadNets corner
    top, left = attack.positions(x)
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) > 80
    assert top.max() <= 29 and left.max() <= 29 and top.min() >= 0
    # same clean image → same position; the attack's seed changes positions
    assert np.array_equal(attack.apply_trigger(x), p)
    assert not np.array_equal(registry.create("badnets_random", seed=4).trigger_mask(x), mask)


def test_colour_option_and_paste_rule(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("badnets_random", options={"color": [120, 100, 80], "patch_size": 4})
    p = attack.apply_trigger(x[:10])
    mask = attack.trigger_mask(x[:10])
    assert (mask.reshape(10, -1).sum(1) == 16).all()
    assert (p[mask] == np.array([120, 100, 80], dtype=np.uint8)).all()


def test_poisoning_targets_and_refuses_trigger_file(cifar_small, tmp_path):
    x, y, _, _ = cifar_small
    attack = registry.create("badnets_random", target=2, seed=1)
    px, py, poisoned = attack.poison_train_arrays(x, y)
    assert (py[poisoned] == 2).all() and poisoned.sum() == round(0.1 * len(x))
    # the patch sits where trigger_mask of the clean images says
    assert (px[poisoned][attack.trigger_mask(x[poisoned])] == 255).all()
    from PIL import Image

    trig = np.zeros((32, 32, 3), dtype=np.uint8)
    trig[0, 0] = 255
    Image.fromarray(trig).save(tmp_path / "t.png")
    with pytest.raises(ValueError, match="trigger_path"):
        registry.create("badnets_random", options={"trigger_path": str(tmp_path / "t.png")})
