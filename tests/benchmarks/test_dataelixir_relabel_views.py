"""benchmarks/dataelixir_relabel_views.py: the relabelling model by training set and view, on tiny data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import dataelixir_relabel_views as bench  # noqa: E402
from detoxops.config import VictimConfig  # noqa: E402
from detoxops.data import ImageSet  # noqa: E402


def test_relabel_views_counts_the_s_samples_by_truth():
    rng = np.random.default_rng(0)
    # class 0 dark, class 1 bright; the target is 0. S: 3 clean dark images and 2 bright images poisoned to 0
    images = np.concatenate([rng.integers(0, 40, (30, 8, 8, 3)), rng.integers(215, 256, (30, 8, 8, 3))]).astype(np.uint8)
    original = np.repeat([0, 1], 30)
    labels, poisoned = original.copy(), np.zeros(60, bool)
    labels[[30, 31]], poisoned[[30, 31]] = 0, True
    train = ImageSet(images=images, labels=labels, original_labels=original, poisoned=poisoned,
                     class_names=["dark", "bright"])
    in_s = np.zeros(60, bool)
    in_s[[0, 1, 2, 30, 31]] = True
    # the poisoned samples' candidates came out dark: asked about the candidate, the model gives them the target
    candidates = images.copy()
    candidates[[30, 31]] = images[[3, 4]]
    rows = bench.relabel_views(train, train, candidates, in_s, 0, "small_cnn", VictimConfig(epochs=15, batch_size=16))
    assert sorted(rows) == sorted(f"{t}/{v}" for t in ("dataset", "candidates") for v in bench.VIEWS)
    for trained_on in ("dataset", "candidates"):
        by_candidate, by_input = rows[f"{trained_on}/candidate"], rows[f"{trained_on}/input"]
        for row in (by_candidate, by_input):
            assert (row["clean_target"], row["label_changing"], row["clean_target_kept"]) == (3, 2, 3)
        assert (by_candidate["label_changing_given_target"], by_candidate["label_changing_true_label"]) == (2, 0)
        assert (by_input["label_changing_given_target"], by_input["label_changing_true_label"]) == (0, 2)
