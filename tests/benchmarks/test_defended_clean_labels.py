"""benchmarks/defended_clean_labels.py: a store victim's accuracy and target share on stored defended clean images,
checked against a direct prediction; a cache without the undefended images is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import defended_clean_labels as bench  # noqa: E402


def test_scores_each_stored_defense_on_the_held_out_clean_images(cifar_archive, tmp_path):
    if not (ROOT / "victims" / "cifar10-fast" / "badnets").is_dir():
        pytest.skip("the committed CIFAR-10 victim store is not in this checkout")
    from detoxops.models import load_classifier, predict

    clean = bench.clean_test(str(cifar_archive))
    cidx = bench.split_indices(clean, "test", 20, seed=0)
    images = np.asarray(clean.images[cidx])
    white = np.full_like(images, 255)
    np.savez(tmp_path / "clean_none_k.npz", images=images)
    np.savez(tmp_path / "clean_white_k.npz", images=white)
    out = tmp_path / "r.json"
    assert bench.main(["--victims", "badnets", "--data", str(cifar_archive), "--cache", str(tmp_path),
                       "--n-clean", "20", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]["badnets"]
    model = load_classifier("cifar10-fast/badnets")
    for name, imgs in (("none", images), ("white", white)):
        pred = predict(model, imgs)
        assert rows[name]["accuracy"] == pytest.approx(100 * np.mean(pred == clean.labels[cidx]))
        assert rows[name]["labelled_target"] == pytest.approx(100 * np.mean(pred == 0))
    (tmp_path / "clean_none_k.npz").unlink()
    with pytest.raises(SystemExit, match="no stored undefended images"):
        bench.main(["--victims", "badnets", "--data", str(cifar_archive), "--cache", str(tmp_path), "--n-clean", "20",
                    "--out", str(out)])
