"""CA / PA / ASR rows on a classifier whose behaviour is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detoxops.data import ImageSet
from detoxops.defenses.base import DefenseOutput, NoDefense
from detoxops.defenses.evaluation import (
    EvalSet,
    evaluate_defense,
    evaluate_defenses,
    split_eval_indices,
    split_eval_sets,
)


def backdoored(images_u8: np.ndarray) -> np.ndarray:
    """Label = the class encoded in pixel (0, 0, 0); a white bottom-right pixel is the backdoor (target 0)."""
    labels = (images_u8[:, 0, 0, 0] // 50).astype(np.int64)
    labels[(images_u8[:, -1, -1] == 255).all(axis=-1)] = 0
    return labels


def _data(n=20):
    labels = np.arange(n) % 4 + 1  # classes 1..4, none is the target 0
    images = np.zeros((n, 6, 6, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = labels * 50
    poisoned = images.copy()
    poisoned[:, -1, -1] = 255
    return images, labels, poisoned


class EraseCorner:
    """Ideal defense for this trigger: blacks out the corner pixel and reports it as the trigger."""

    name = "erase"

    def __call__(self, x01, generator=None):
        x = x01.clone()
        x[:, :, -1, -1] = 0
        tmap = torch.zeros_like(x[:, :1])
        tmap[:, :, -1, -1] = 1
        return DefenseOutput(images=x, maps={"trigger_map": tmap, "noise_levels": 100 * tmap})


def test_rows_have_exact_numbers():
    images, labels, poisoned = _data()
    mask = np.zeros((20, 6, 6), dtype=bool)
    mask[:, -1, -1] = True
    data = EvalSet(images, labels, poisoned, labels, target=0, trigger_mask=mask)
    none, erase = evaluate_defenses(
        backdoored, {"none": NoDefense(), "erase": EraseCorner()}, data, batch_size=7
    )
    assert (none["ca"], none["pa"], none["asr"]) == (1.0, 0.0, 1.0)  # fractions (detoxops.metrics)
    assert (erase["ca"], erase["pa"], erase["asr"]) == (1.0, 1.0, 0.0)
    assert erase["map_auc"] == 1.0 and erase["trigger_level"] == 100.0 and erase["other_level"] == 0.0
    assert erase["image_level"] == pytest.approx(100 / 36)
    assert "map_auc" not in none and none["n_clean"] == 20 and none["images_per_s"] > 0


class WhiteCorner:
    """A defense that itself stamps the backdoor's trigger: it sends every clean image to the target."""

    name = "stamp"

    def __call__(self, x01, generator=None):
        x = x01.clone()
        x[:, :, -1, -1] = 1
        return DefenseOutput(images=x)


def test_rows_carry_the_label_drift_of_the_clean_images():
    images, labels, poisoned = _data()
    data = EvalSet(images, labels, poisoned, labels, target=0)
    none, erase, stamp = evaluate_defenses(
        backdoored, {"none": NoDefense(), "erase": EraseCorner(), "stamp": WhiteCorner()}, data, batch_size=6)
    assert none["drift_inflow"] == 0 and not none["drift_flagged"] and erase["drift_changed"] == 0
    assert stamp["drift_flagged"] and stamp["drift_class"] == 0 and stamp["drift_inflow"] == 1.0
    assert stamp["drift_changed"] == 1.0 and stamp["ca"] == 0.0
    # a single row without the reference labels has no drift fields
    assert "drift_inflow" not in evaluate_defense(backdoored, WhiteCorner(), data)


def test_from_imagesets_matches_counterparts_and_derives_mask():
    images, labels, poisoned = _data(8)
    names = [f"c{i}" for i in range(5)]
    clean = ImageSet(images, labels, names, source_index=np.arange(100, 108))
    order = np.array([3, 1, 7])
    pois = ImageSet(
        poisoned[order],
        np.zeros(3, dtype=np.int64),
        names,
        source_index=100 + order,
        original_labels=labels[order],
        poisoned=np.ones(3, dtype=bool),
    )
    data = EvalSet.from_imagesets(clean, pois, target=0)
    np.testing.assert_array_equal(data.poisoned_labels, labels[order])
    assert data.trigger_mask.sum() == 3 and data.trigger_mask[:, -1, -1].all()
    row = evaluate_defense(backdoored, NoDefense(), data)
    assert row["asr"] == 1.0


def test_eval_set_rejects_target_in_poisoned_labels():
    images, labels, poisoned = _data(4)
    with pytest.raises(ValueError, match="contains the target"):
        EvalSet(images, labels, poisoned, labels, target=1)


def test_selection_rule_and_frontier():
    from detoxops.defenses.selection import pareto_frontier, select_setting, summarise_settings

    rows = []  # rates as fractions, the bound in points (params.sweep.max_ca_drop)
    for attack, base_ca in (("a", 0.80), ("b", 0.70)):
        rows.append({"setting": "none", "attack": attack, "ca": base_ca, "pa": 0.05, "asr": 0.95})
        rows.append({"setting": "mild", "attack": attack, "ca": base_ca - 0.01, "pa": 0.40, "asr": 0.40})
        rows.append({"setting": "strong", "attack": attack, "ca": base_ca - 0.025, "pa": 0.60, "asr": 0.10})
        rows.append({"setting": "brutal", "attack": attack, "ca": base_ca - 0.20, "pa": 0.50, "asr": 0.01})
    chosen, why = select_setting(rows, max_ca_drop=3.0)
    assert chosen["setting"] == "strong" and "lowest mean ASR (10.00)" in why and "its drop: 2.50" in why
    chosen, why = select_setting(rows, max_ca_drop=0.5)
    assert chosen["setting"] == "mild" and "fell back" in why
    assert summarise_settings(rows)[0]["mean_ca_drop"] == pytest.approx(0.20)  # brutal: lowest ASR, 20 points
    front = [s["setting"] for s in pareto_frontier(summarise_settings(rows))]
    assert front == ["none", "mild", "strong", "brutal"]


def test_selection_bound_is_inclusive_despite_float_rounding():
    """A drop of exactly the bound meets it: 0.92 - 0.89 is 0.030000000000000027 in floats, 3 points all the same."""
    from detoxops.defenses.selection import select_setting

    rows = [{"setting": "none", "attack": "a", "ca": 0.92, "pa": 0.0, "asr": 1.0},
            {"setting": "at_bound", "attack": "a", "ca": 0.89, "pa": 0.5, "asr": 0.2},
            {"setting": "safe", "attack": "a", "ca": 0.92, "pa": 0.1, "asr": 0.9}]
    assert 0.92 - 0.89 > 0.03
    assert select_setting(rows, max_ca_drop=3.0)[0]["setting"] == "at_bound"
    assert select_setting(rows, max_ca_drop=2.9)[0]["setting"] == "safe"
    # ASR within 0.01 points of the best is a tie, won by the smaller CA drop
    rows[2]["asr"] = 0.20005
    assert select_setting(rows, max_ca_drop=3.0)[0]["setting"] == "safe"


def test_validation_and_heldout_splits_are_disjoint():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    clean = ImageSet(images=rng.integers(0, 255, (24, 8, 8, 3), dtype=np.uint8), labels=labels,
                     class_names=[str(i) for i in range(4)])
    keep = np.flatnonzero(labels != 0)
    trig = clean.subset(keep)
    trig = trig.replace(labels=np.zeros(len(keep), dtype=np.int64))
    sets = split_eval_sets(clean, trig, target=0, fraction=0.5, seed=0)
    v, t = sets["val"], sets["test"]
    assert len(v.clean_images) + len(t.clean_images) == 24
    assert len(v.poisoned_images) + len(t.poisoned_images) == len(keep)
    for s in (v, t):
        assert not np.any(s.poisoned_labels == 0)
    seen = [{img.tobytes() for img in (*s.clean_images, *s.poisoned_images)} for s in (v, t)]
    assert not seen[0] & seen[1]  # no image, clean or triggered, on both sides
    # the same rule as indices, for several triggered sets at once (benchmarks/sampdetox_eval.py); seeded
    other = trig.subset(np.arange(0, len(keep), 2))
    idx = split_eval_indices(clean, [trig, other], fraction=0.5, seed=0)
    for split, s in sets.items():
        clean_idx, trig_idx, other_idx = idx[split]
        assert np.array_equal(s.clean_images, clean.images[clean_idx])
        assert np.array_equal(s.poisoned_images, trig.images[trig_idx])
        assert set(other.source_index[other_idx]) <= set(clean.source_index[clean_idx])
    assert sum(len(idx[s][2]) for s in idx) == len(other)
    assert not np.array_equal(split_eval_indices(clean, [], 0.5, seed=1)["val"][0], idx["val"][0])


def test_at_most_samples_both_sides_reproducibly():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(2), 10)
    clean = ImageSet(images=rng.integers(0, 255, (20, 4, 4, 3), dtype=np.uint8), labels=labels, class_names=["a", "b"])
    trig = clean.subset(np.flatnonzero(labels == 1))
    data = EvalSet.from_imagesets(clean, trig, target=0)
    small = data.at_most(3, seed=5)
    assert len(small.clean_images) == len(small.poisoned_images) == 3
    again = data.at_most(3, seed=5)
    assert np.array_equal(small.clean_images, again.clean_images)
    assert data.at_most(None, seed=5) is data and len(data.at_most(100, seed=5).clean_images) == 20
