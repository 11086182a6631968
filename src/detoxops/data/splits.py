"""Deterministic, stratified subsets and splits (for CPU-scale runs and validation hold-outs).

Randomness comes only from ``seed``; classes are visited in label order and chosen indices are returned in
their original order, so the same seed always gives the same samples.
"""

from __future__ import annotations

import numpy as np

from detoxops.data.imageset import ImageSet

__all__ = [
    "class_interleaved_indices",
    "stratified_subset",
    "stratified_split",
    "stratified_subset_indices",
    "stratified_split_indices",
    "split_validation",
]


def class_interleaved_indices(labels: np.ndarray) -> np.ndarray:
    """Indices taking image j of every class, then j + 1 (classes in label order): any prefix keeps the classes
    balanced, e.g. the first n images of a class-sorted test split for an evaluation."""
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        rank[idx] = np.arange(len(idx))
    return np.lexsort((labels, rank))


def stratified_subset_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` random samples from each class (all of a smaller class)."""
    if int(per_class) < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = min(int(per_class), members.size)
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def stratified_split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class into (rest, held-out) with ``round(fraction * class size)`` held out.

    A class with at least two samples keeps at least one on each side.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rest, held = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_held = int(round(float(fraction) * members.size))
        if members.size >= 2:
            n_held = min(max(n_held, 1), members.size - 1)
        held.append(members[:n_held])
        rest.append(members[n_held:])
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.sort(np.concatenate(rest)) if rest else empty,
        np.sort(np.concatenate(held)) if held else empty,
    )


def stratified_subset(ds: ImageSet, per_class: int, seed: int) -> ImageSet:
    """At most ``per_class`` samples of each class, chosen with ``seed``; provenance kept."""
    out = ds.subset(stratified_subset_indices(ds.labels, per_class, seed))
    return out.with_transform({"op": "stratified_subset", "per_class": int(per_class), "seed": int(seed)})


def stratified_split(ds: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """``(a, b)`` with ``b`` holding ``fraction`` of every class and ``a`` the rest; disjoint, provenance kept."""
    rest, held = stratified_split_indices(ds.labels, fraction, seed)
    a = ds.subset(rest).with_transform(
        {"op": "stratified_split", "part": "rest", "fraction": float(fraction), "seed": int(seed)}
    )
    b = ds.subset(held).with_transform(
        {"op": "stratified_split", "part": "held_out", "fraction": float(fraction), "seed": int(seed)}
    )
    return a, b


def split_validation(splits: dict[str, ImageSet], fraction: float, seed: int) -> dict[str, ImageSet]:
    """``{"train", "val", "test"}``: ``fraction`` of every class of ``test`` held out as ``val`` (for parameter
    selection, e.g. ``data.val_fraction``); the remaining ``test`` is the evaluation split. A ``val`` split the
    source already has is kept as it is."""
    if "val" in splits:
        return dict(splits)
    if "test" not in splits:
        raise ValueError(f"split_validation needs a 'test' split, found {sorted(splits)}")
    test, val = stratified_split(splits["test"], fraction, seed)
    val.meta["split"], test.meta["split"] = "val", "test"
    return {**splits, "val": val, "test": test}
