"""Stratified subsets and splits: per-class counts, determinism, disjointness, provenance."""

from __future__ import annotations

import numpy as np
import pytest

from detoxops.data import ImageSet, stratified_split, stratified_subset


@pytest.fixture
def ds() -> ImageSet:
    labels = np.repeat(np.arange(4), [10, 20, 5, 1])
    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, 256, (36, 2, 2, 3), dtype=np.uint8), labels, list("abcd"))


def test_subset_counts_and_determinism(ds):
    sub = stratified_subset(ds, 6, seed=1)
    assert sub.class_counts().tolist() == [6, 6, 5, 1]  # small classes are taken whole
    again = stratified_subset(ds, 6, seed=1)
    np.testing.assert_array_equal(sub.source_index, again.source_index)
    other = stratified_subset(ds, 6, seed=2)
    assert not np.array_equal(sub.source_index, other.source_index)
    assert np.all(np.diff(sub.source_index) > 0)  # original order kept
    np.testing.assert_array_equal(sub.labels, ds.labels[sub.source_index])
    assert sub.meta["transforms"][-1]["op"] == "stratified_subset"
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        stratified_subset(ds, 0, seed=0)


def test_split_is_stratified_disjoint_and_complete(ds):
    rest, held = stratified_split(ds, 0.2, seed=0)
    assert held.class_counts().tolist() == [2, 4, 1, 0]
    assert rest.class_counts().tolist() == [8, 16, 4, 1]
    assert set(rest.source_index).isdisjoint(held.source_index)
    assert sorted([*rest.source_index, *held.source_index]) == list(range(36))
    rest2, held2 = stratified_split(ds, 0.2, seed=0)
    np.testing.assert_array_equal(held.source_index, held2.source_index)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        stratified_split(ds, 1.0, seed=0)


def test_split_validation_holds_out_part_of_test(ds):
    from detoxops.data import split_validation

    train, test = stratified_split(ds, 0.5, seed=0)
    out = split_validation({"train": train, "test": test}, 0.5, seed=0)
    assert set(out) == {"train", "val", "test"}
    assert len(out["val"]) + len(out["test"]) == len(test)
    assert set(out["val"].source_index).isdisjoint(out["test"].source_index)
    assert out["val"].meta["split"] == "val" and out["train"] is train
    assert split_validation(out, 0.5, seed=0)["val"] is out["val"]
    with pytest.raises(ValueError, match="needs a 'test' split"):
        split_validation({"train": train}, 0.5, seed=0)


def test_class_interleaved_indices_keep_every_prefix_balanced():
    import numpy as np

    from detoxops.data.splits import class_interleaved_indices

    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])  # class-sorted, as the loaders store data
    order = class_interleaved_indices(labels)
    assert labels[order].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert sorted(order.tolist()) == list(range(9)) and order[:3].tolist() == [0, 3, 6]
