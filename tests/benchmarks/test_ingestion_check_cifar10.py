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
    """Every 4th sample poisoned with target 0: its original label is the next class, except every 8th, which
    already had the target (dirty-label poison drawn from every class, as BackdoorBench draws it)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3)
    poisoned = np.zeros(n, bool)
    poisoned[::4] = True
    labels[poisoned] = 0
    original = labels.copy()
    original[poisoned] = 1
    original[::8] = 0
    return ImageSet(images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), labels=labels.astype(np.int64),
                    class_names=["a", "b", "c"], poisoned=poisoned, original_labels=original.astype(np.int64))


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
    train = _set(16, 0)  # poisoned: 0, 4, 8, 12; 0 and 8 already had the target
    order = np.lexsort((np.arange(16), train.labels))
    purified_labels = train.labels[order].copy()
    at = {int(i): k for k, i in enumerate(order)}
    purified_labels[[at[4], at[8]]] = 1  # one label-changing sample restored, one target-class sample flipped
    purified_labels[at[0]] = 2  # and a target-class one given a wrong label
    purified = ImageSet(images=train.images[order], labels=purified_labels, class_names=train.class_names)
    version = save_version({"train": purified}, tmp_path / "versions", "toy-purified", source="test")
    marker = tmp_path / "data" / "toy" / "abc.check.json"
    marker.parent.mkdir(parents=True)
    (tmp_path / "data" / "old.check.json").write_text(json.dumps({"status": "passed"}))
    time.sleep(0.01)
    marker.write_text(json.dumps({"status": "quarantined", "purified_version": str(version)}))
    record = bench.check_record(tmp_path / "data")
    assert record["status"] == "quarantined"  # the newest marker
    rates = bench.detection_against_truth(record, train)
    # of the 4 poisoned, sample 4 got its own label back; 0 and 8 lost theirs, 12 kept the target: 13 of 16 right
    assert rates == {"tpr": 0.75, "fpr": 0.0, "label_changing_poisoned": 2, "tpr_label_changing": 0.5,
                     "label_acc": 0.8125, "label_acc_poisoned": 0.25}
    assert bench.detection_against_truth({"status": "passed", "purified_version": None}, train) == {}


def test_rescore_updates_the_stored_entry_without_running_the_check(tmp_path, monkeypatch):
    import argparse

    train = _set(16, 0)
    order = np.lexsort((np.arange(16), train.labels))
    purified_labels = train.labels[order].copy()
    purified_labels[int(np.flatnonzero(order == 4)[0])] = 1  # sample 4 restored (0 and 8 kept their true label 0)
    purified = ImageSet(images=train.images[order], labels=purified_labels, class_names=train.class_names)
    entry = tmp_path / "work" / "badnets-seed1-1000pc"
    version = save_version({"train": purified}, entry / "versions", "toy-purified", source="test")
    (entry / "dvc" / "data").mkdir(parents=True)
    (entry / "dvc" / "data" / "x.check.json").write_text(json.dumps({"purified_version": str(version)}))
    results = tmp_path / "results.json"
    other = {"attack": "blended", "log": "elsewhere/check.log", "tpr": 0.5}
    results.write_text(json.dumps([other, {"attack": "badnets", "log": str(entry / "check.log"), "tpr": 0.25,
                                           "wall_s": 10.0}]))
    monkeypatch.setattr(bench, "build_train", lambda args, base: (train, None))  # the archive's subset, rebuilt
    args = argparse.Namespace(work=tmp_path / "work", attack="badnets", seed=1, per_class=1000, json=results)
    assert bench.rescore(args, None, entry) == 0
    stored = json.loads(results.read_text())
    assert stored[0] == other and stored[1]["wall_s"] == 10.0  # nothing else touched
    assert (stored[1]["tpr"], stored[1]["tpr_label_changing"], stored[1]["label_acc_poisoned"]) == (0.25, 0.5, 0.75)
    missing = argparse.Namespace(**{**vars(args), "attack": "wanet"})
    assert bench.rescore(missing, None, tmp_path / "work" / "wanet-seed1-1000pc") == 1
