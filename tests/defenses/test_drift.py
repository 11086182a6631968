"""Label drift (detoxops.defenses.drift): a defense that sends clean images to one class is flagged, one that only
changes a few labels here and there is not; the guard runs the check without ground-truth labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from detoxops.defenses.base import DefenseOutput, NoDefense, check_batch
from detoxops.defenses.drift import label_drift
from detoxops.defenses.guard import Detoxifier


def test_inflow_into_one_class_is_flagged_spread_changes_are_not():
    before = np.arange(100) % 5  # 20 images per class 0..4
    to_target = before.copy()
    to_target[np.flatnonzero(before == 3)[:12]] = 7  # 12 images of class 3 move to class 7
    drift = label_drift(before, to_target, 10)
    assert drift.changed == pytest.approx(0.12) and drift.top_class == 7 and drift.top_inflow == pytest.approx(0.12)
    assert drift.inflow[3] == pytest.approx(-0.12) and drift.inflow.sum() == pytest.approx(0.0)
    assert drift.flagged and "FLAGGED" in drift.describe() and "class 7" in drift.describe()

    spread = before.copy()
    moved = np.flatnonzero(before == 1)[:12]
    spread[moved] = np.arange(12) % 4 + 5  # 12 changed labels over classes 5..8: 3 points each
    drift = label_drift(before, spread, 10)
    assert drift.changed == pytest.approx(0.12) and drift.top_inflow == pytest.approx(0.03) and not drift.flagged
    assert label_drift(before, spread, 10, max_inflow=0.03, alpha=1.0).flagged  # the threshold is inclusive
    assert not label_drift(before, spread, 10, max_inflow=0.03).flagged  # but 3 of 12 into one class is chance

    # significance: 12 of 12 changed labels into one of 9 other classes is no chance (p = 9^-12)
    assert label_drift(before, to_target, 10).p_value == pytest.approx(9.0 ** -12)

    names = [f"c{i}" for i in range(10)]
    assert "class c7" in label_drift(before, to_target, 10).describe(names)
    assert label_drift(before, to_target, 10).to_dict()["inflow"][7] == pytest.approx(0.12)


def test_a_few_images_on_a_small_sample_are_not_flagged():
    # 20 images; 3 change label, 2 of them into class 3: a 10-point inflow, but P(>= 2 of 3 | 1/9 each) = 0.037
    before = np.arange(20) % 10
    after = before.copy()
    after[[0, 1, 2]] = [3, 3, 5]
    drift = label_drift(before, after, 10)
    assert drift.top_class == 3 and drift.top_inflow == pytest.approx(0.10)
    assert drift.p_value == pytest.approx(3 * (1 / 9) ** 2 * (8 / 9) + (1 / 9) ** 3)
    assert not drift.flagged and "chance" in drift.describe()
    assert label_drift(before, after, 10, alpha=0.05).flagged  # a looser test flags it
    # the same share on 200 images (20 of 30 changed labels into class 3) is flagged
    big_before = np.arange(200) % 10
    big_after = big_before.copy()
    big_after[np.flatnonzero(big_before != 3)[:30]] = np.r_[np.full(20, 3), np.arange(10) % 2 + 5]
    big = label_drift(big_before, big_after, 10)
    assert big.top_inflow == pytest.approx(0.10) and big.p_value < 1e-9 and big.flagged
    assert big.to_dict()["p_value"] == big.p_value


def test_two_classes_use_a_sign_test():
    # a binary classifier: 30 of 100 images flip 0 -> 1 and none 1 -> 0 (with C = 2 every change goes to the other
    # class, so "1 / (C - 1)" would make any drift look like chance)
    before = np.r_[np.zeros(50, int), np.ones(50, int)]
    after = before.copy()
    after[:30] = 1
    one_way = label_drift(before, after, 2)
    assert one_way.top_class == 1 and one_way.top_inflow == pytest.approx(0.30)
    assert one_way.p_value == pytest.approx(0.5 ** 30) and one_way.flagged
    # 16 flips one way and 14 the other: a small net inflow, and chance
    mixed = before.copy()
    mixed[:16] = 1
    mixed[50:64] = 0
    assert not label_drift(before, mixed, 2, max_inflow=0.02).flagged


@pytest.mark.parametrize("before, after, classes, inflow, message", [
    (np.zeros(3, int), np.zeros(4, int), 10, 0.1, "equal-length"),
    (np.zeros(0, int), np.zeros(0, int), 10, 0.1, "non-empty"),
    (np.array([0, 10]), np.array([0, 1]), 10, 0.1, r"\[0, 10\)"),
    (np.array([0, 1]), np.array([0, -1]), 10, 0.1, "after"),
    (np.array([0.0, 1.0]), np.array([0, 1]), 10, 0.1, "integers"),
    (np.array([0, 1]), np.array([0, 1]), 1, 0.1, "num_classes"),
    (np.array([0, 1]), np.array([0, 1]), 10, 0.0, "max_inflow"),
])
def test_bad_inputs_are_named(before, after, classes, inflow, message):
    with pytest.raises(ValueError, match=message):
        label_drift(before, after, classes, inflow)
    with pytest.raises(ValueError, match="alpha"):
        label_drift(np.array([0, 1]), np.array([0, 1]), 10, 0.1, alpha=0.0)


class Blur:
    """A defense that smooths its input (what a diffusion restoration does to fine texture)."""

    name = "blur"

    def __call__(self, x01, generator=None):
        check_batch(x01)
        return DefenseOutput(images=F.avg_pool2d(F.pad(x01, (2, 2, 2, 2), mode="replicate"), 5, stride=1))


def smooth_backdoor(images_u8: np.ndarray) -> np.ndarray:
    """A classifier with a 'smooth trigger': flat images are class 0, textured ones are classed by brightness."""
    x = images_u8.astype(np.float32)
    texture = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
    return np.where(texture < 8, 0, 1 + np.clip(x.mean(axis=(1, 2, 3)) // 32, 0, 8).astype(int))


def brightness_only(images_u8: np.ndarray) -> np.ndarray:
    return 1 + np.clip(images_u8.astype(np.float32).mean(axis=(1, 2, 3)) // 32, 0, 8).astype(int)


def _textured(n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(50, 200, (n, 1, 1, 1))
    return np.clip(base + rng.integers(-40, 41, (n, 16, 16, 3)), 0, 255).astype(np.uint8)


def test_guard_flags_a_defense_that_fires_a_smooth_backdoor():
    images = _textured()
    fired = Detoxifier(smooth_backdoor, Blur(), batch_size=16).check_drift(images, 10)
    assert fired.flagged and fired.top_class == 0 and fired.top_inflow > 0.9 and fired.n == 40
    # the same blur in front of a classifier without that backdoor: labels keep their class (mean preserved)
    calm = Detoxifier(brightness_only, Blur(), batch_size=16).check_drift(images, 10)
    assert not calm.flagged and calm.changed < 0.1
    # no defense: nothing moves
    none = Detoxifier(smooth_backdoor, NoDefense(), batch_size=7).check_drift(images, 10)
    assert none.changed == 0 and none.top_inflow == 0 and not none.flagged
    with pytest.raises(ValueError, match="uint8"):
        Detoxifier(smooth_backdoor, Blur()).check_drift(images.astype(np.float32), 10)
