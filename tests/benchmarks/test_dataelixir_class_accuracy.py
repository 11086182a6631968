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
