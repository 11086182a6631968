"""Poison-sample selection with BackdoorBench's semantics (``utils/backdoor_generate_poison_index.py``)."""

from __future__ import annotations

import numpy as np


def select_poison_indices(
    labels: np.ndarray, *, ratio: float, target: int, clean_label: bool, seed: int = 0
) -> np.ndarray:
    """Sorted indices of training samples to poison.

    Dirty-label: ``round(ratio * N)`` indices drawn uniformly from *all* samples (so about 1/K of them are
    already of the target class). Clean-label: ``round(ratio * N)`` requested from the target-class samples
    only — the ratio is relative to the whole set, so at 0.1 on CIFAR-10 every target-class image is poisoned.
    """
    labels = np.asarray(labels)
    n = len(labels)
    want = int(round(ratio * n))
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(labels == target) if clean_label else np.arange(n)
    take = min(want, len(pool))
    return np.sort(rng.choice(pool, size=take, replace=False)) if take else np.zeros(0, dtype=np.int64)
