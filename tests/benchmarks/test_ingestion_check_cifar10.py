"""benchmarks/ingestion_check_cifar10.py: the folder tree it hands the ingestion check holds the poisoned pixels in
the order the check reads them, and the check's record is found and scored against the known poison."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import ingestion_check_cifar10 as bench  # noqa: E402

from detoxops.data import ImageSet, save_version  # noqa: E402
from detoxops.data.folders import imagesets_from_entries  # noqa: E402


def _set(n: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3)
    poisoned = np.zeros(n, bool)
    poisoned[::4] = True
    return ImageSet(images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), labels=labels.astype(np.int64),
                    class_names=["a", "b", "c"], poisoned=poisoned)


def test_the_tree_is_read_back_losslessly_in_class_then_file_order(tmp_path):
    from detoxops.data.archives import iter_entries
    from detoxops.data.validate import ImagePolicy

    train, test = _set(12, 0), _set(6, 1)
    counts = bench.write_tree({"train": train, "test": test}, tmp_path / "tree")
    assert counts == {"train": 12, "test": 6} and not (tmp_path / "tree.tmp").exists()
    read = imagesets_from_entries(iter_entries(tmp_path / "tree"), "tree", ImagePolicy(), progress=False)
    order = np.lexsort((np.arange(12), train.labels))  # the order bench.detection_against_truth assumes
    assert np.array_equal(read["train"].images, train.images[order])  # PNG: the attack's pixels, exactly
    assert np.array_equal(read["train"].labels, train.labels[order])


def test_detection_is_scored_on_the_stored_purified_version(tmp_path):
    train = _set(12, 0)
    order = np.lexsort((np.arange(12), train.labels))
    purified_labels = train.labels[order].copy()
    flip = np.flatnonzero(train.poisoned[order])[:2]  # two of the three poisoned samples relabelled
    purified_labels[flip] = (purified_labels[flip] + 1) % 3
    purified = ImageSet(images=train.images[order], labels=purified_labels, class_names=train.class_names)
    version = save_version({"train": purified}, tmp_path / "versions", "toy-purified", source="test")
    marker = tmp_path / "data" / "toy" / "abc.check.json"
    marker.parent.mkdir(parents=True)
    (tmp_path / "data" / "old.check.json").write_text(json.dumps({"status": "passed"}))
    time.sleep(0.01)
    marker.write_text(json.dumps({"status": "quarantined", "purified_version": str(version)}))
    record = bench.check_record(tmp_path / "data")
    assert record["status"] == "quarantined"  # the newest marker
    rates = bench.detection_against_truth(record, train.poisoned, train.labels)
    assert rates == {"tpr": round(2 / 3, 4), "fpr": 0.0}
    assert bench.detection_against_truth({"status": "passed", "purified_version": None}, train.poisoned,
                                         train.labels) == {}
