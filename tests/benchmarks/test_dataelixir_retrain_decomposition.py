"""benchmarks/dataelixir_retrain_decomposition.py: the retraining sets that split images' from labels' cost."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import dataelixir_retrain_decomposition as bench  # noqa: E402
from detoxops.data import ImageSet  # noqa: E402


def _sets():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    true = np.array([1, 2, 0, 0, 1, 2])
    poisoned = np.array([1, 1, 0, 0, 0, 0], bool)
    labels = np.where(poisoned, 0, true)  # the attack gave samples 0 and 1 the target 0
    train = ImageSet(images=images, labels=labels, class_names=["a", "b", "c"], original_labels=true,
                     poisoned=poisoned)
    out_images = images.copy()
    out_images[[0, 1, 2]] = 7  # purified: both poisoned ones and a clean target-class one
    # sample 0 restored, sample 1 given a wrong label, clean sample 2 relabelled (a false positive)
    sanitised = train.replace(images=out_images, labels=np.array([1, 1, 2, 0, 1, 2]))
    return train, sanitised


def test_variants_keep_one_side_and_undo_the_other():
    train, sanitised = _sets()
    v = bench.variants(train, sanitised, [0])
    np.testing.assert_array_equal(v["true_labels"].images, sanitised.images)
    np.testing.assert_array_equal(v["true_labels"].labels, train.original_labels)
    np.testing.assert_array_equal(v["input_images"].images, train.images)
    np.testing.assert_array_equal(v["input_images"].labels, sanitised.labels)
    # samples 0, 1, 2 had their label changed by the defense: dropped
    np.testing.assert_array_equal(v["drop_relabelled"].source_index, train.source_index[[3, 4, 5]])
    np.testing.assert_array_equal(v["drop_relabelled"].labels, [0, 1, 2])
    # no poisoned sample keeps the target 0 here: nothing dropped; were the target 1, both poisoned samples (now
    # labelled 1) would be
    assert len(v["drop_target_poison"]) == 6
    np.testing.assert_array_equal(bench.variants(train, sanitised, [1])["drop_target_poison"].source_index,
                                  train.source_index[2:])
    assert v["as_sanitised"] is sanitised
    # every poisoned sample dropped, whatever label stage 4 gave it
    np.testing.assert_array_equal(v["drop_poison"].source_index, train.source_index[2:])
    np.testing.assert_array_equal(v["drop_poison"].labels, [2, 0, 1, 2])


def test_gap_pairs_each_training_seed_with_its_own_reference():
    row = {"reference": {"acc": 0.767}, "as_sanitised": {"acc": 0.730}}
    assert bench.gap(row) is None  # one pair says nothing about the spread
    row["train_seeds"] = {"101": {"reference": {"acc": 0.770}, "variants": {"as_sanitised": {"acc": 0.745}}},
                          "102": {"reference": {"acc": 0.760}, "variants": {}}}  # 102's retraining not done yet
    spread = bench.gap(row)
    assert spread["per_seed"] == pytest.approx({"benchmark": -0.037, "101": -0.025})
    assert spread["mean"] == pytest.approx(-0.031)
    assert (spread["min"], spread["max"]) == pytest.approx((-0.037, -0.025))


def test_differences_count_images_and_wrong_labels():
    train, sanitised = _sets()
    assert bench.differences(train, sanitised) == {"images_changed": 3, "wrong_labels": 2, "wrong_labels_clean": 1,
                                                   "wrong_labels_poisoned": 1, "relabelled": 3}


def test_variants_refuse_sets_of_different_sizes():
    train, sanitised = _sets()
    with pytest.raises(ValueError, match="sanitised set has 5 samples, the input 6"):
        bench.variants(train, sanitised.subset(np.arange(5)), [0])
