"""benchmarks/dataelixir_class_accuracy.py: per-class accuracy and predicted shares of a stored classifier."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import dataelixir_class_accuracy as bench  # noqa: E402
from detoxops.models import build_classifier, predict, save_classifier  # noqa: E402


def test_class_accuracy_matches_the_predictions(tmp_path):
    model = build_classifier("small_cnn", 3, image_size=8, width=4).eval()
    save_classifier(model, tmp_path / "m", {})
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    labels = np.tile(np.arange(3), 10)
    out = bench.class_accuracy(tmp_path / "m", images, labels)
    pred = predict(model, images)
    assert out["acc"] == float((pred == labels).mean())
    assert out["per_class"] == [float((pred[labels == c] == c).mean()) for c in range(3)]
    assert sum(out["predicted_share"]) == 30 and len(out["predicted_share"]) == 3
    # the overall accuracy of a balanced set is the mean of the per-class ones
    assert np.isclose(out["acc"], np.mean(out["per_class"]))


def test_label_audit_counts_what_became_of_the_target_labels(tmp_path):
    # label 0 is the target; columns as DataElixir writes them
    rows = [  # label, set, chosen_round, final_label, flagged, poisoned_true
        (0, "benign", -1, 0, 0, 0),       # clean target sample kept
        (0, "suspicious", 1, 3, 1, 0),    # clean target sample relabelled: a false positive
        (0, "suspicious", 0, 0, 0, 0),    # clean target sample the relabelling kept
        (0, "poisoned", 2, 1, 1, 0),      # clean target sample in P: the vote, a false positive
        (0, "poisoned", 1, 2, 1, 1),      # poison restored
        (0, "suspicious", 0, 0, 0, 1),    # poison given the target back
        (0, "benign", -1, 0, 0, 1),       # poison its trigger kept in B
        (1, "benign", -1, 1, 0, 0),       # another label: never relabelled
        (0, "benign", -1, 0, 0, 0),       # clean target sample kept
    ]
    lines = ["index,label,set,chosen_round,final_label,flagged,poisoned_true,chosen_distance"]
    distances = [0.10, 0.3, 0.2, 0.2, 0.2, 0.2, 0.40, 0.1, 0.11]  # B's target-label ones: clean 0.10 / 0.11, poisoned 0.40
    lines += [",".join(map(str, (i, *r, dist))) for i, (r, dist) in enumerate(zip(rows, distances, strict=True))]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    audit = bench.label_audit(tmp_path / "d.csv", [0])
    assert (audit["clean_target_samples"], audit["clean_target_lost_label"], audit["false_positives"]) == (5, 2, 2)
    assert audit["clean_target_by_set"] == {"benign": {"n": 2, "kept_target": 2}, "poisoned": {"n": 1, "kept_target": 0},
                                            "suspicious": {"n": 2, "kept_target": 1}}
    assert audit["poison_with_target_label"] == 3
    assert audit["poison_by_set"]["suspicious"] == {"n": 1, "kept_target": 1}
    assert audit["poison_by_set"]["benign"] == {"n": 1, "kept_target": 1}
    assert audit["final_label_counts"] == [5, 2, 1, 1]  # final labels 0, 1, 2, 3
    assert audit["purified_share_by_final_label"] == [0.4, 0.5, 1.0, 1.0]
    # B's three target-label samples: median 0.11, MAD 0.01 · 1.4826: the poisoned one (0.40) lies beyond one MAD
    assert audit["b_target"] == {"n": 3, "poisoned": 1, "distance_auc": 1.0, "beyond_one_mad": 1,
                                 "beyond_one_mad_poisoned": 1}
