"""detoxops.operations.evaluate_split (the ``sweep`` / ``detox_eval`` stages and the sweep task) and
detoxops.operations.write_report (the ``report`` stage), on a classifier whose behaviour is known exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from detoxops.config import load_params
from detoxops.data import ImageSet
from detoxops.operations import evaluate_split, write_report


class PixelCode(torch.nn.Module):
    """Label = pixel (0, 0, channel 0) // 50; a white bottom-right pixel is the backdoor (target 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        label = (x01[:, 0, 0, 0] * 255).round().long() // 50
        label = torch.where((x01[:, :, -1, -1] > 0.99).all(dim=1), torch.zeros_like(label), label)
        return torch.nn.functional.one_hot(label, 4).float() + 0 * self.dummy


def _sets(n_per_class: int = 6) -> tuple[ImageSet, ImageSet]:
    labels = np.repeat(np.arange(4), n_per_class)
    images = np.zeros((len(labels), 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = 50 * labels + 10
    clean = ImageSet(images, labels, ["a", "b", "c", "d"])
    keep = np.flatnonzero(labels != 0)
    trig_images = images[keep].copy()
    trig_images[:, -1, -1] = 255
    triggered = ImageSet(trig_images, np.zeros(len(keep), np.int64), clean.class_names, source_index=keep,
                         original_labels=labels[keep], poisoned=np.ones(len(keep), bool))
    return clean, triggered


def test_scores_the_split_and_writes_the_stage_outputs(tmp_path):
    clean, triggered = _sets()
    params = load_params(None, ["data.val_fraction=0.5", "data.seed=0"])
    val = evaluate_split(clean, triggered, 0, PixelCode(), params, "val", ["none"], attack_name="toy",
                         device="cpu", out=tmp_path)
    (row,) = val.rows
    assert (row["ca"], row["pa"], row["asr"], row["ca_drop"]) == (1.0, 0.0, 1.0, 0.0)  # fractions in code
    (shown,) = val.table()
    assert (shown["ca"], shown["pa"], shown["asr"], shown["ca_drop"]) == (100.0, 0.0, 100.0, 0.0)  # the stored table
    assert row["n_clean"] == 12 and row["n_poisoned"] == 9  # half of each class; triggered follow their source
    test = evaluate_split(clean, triggered, 0, PixelCode(), params, "test", ["none"], attack_name="toy",
                          device="cpu")
    assert test.rows[0]["n_clean"] == 12 and test.defenses_csv is None
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "split": "val", "attack": "toy", "none": {"ca": 100.0, "pa": 0.0, "asr": 100.0, "ca_drop": 0.0}}
    with (tmp_path / "defenses.csv").open() as f:
        assert [r["defense"] for r in csv.DictReader(f)] == ["none"]
    small = evaluate_split(clean, triggered, 0, PixelCode(), params, "val", ["none"], attack_name="toy",
                           max_images=3, device="cpu")
    assert small.rows[0]["n_clean"] == small.rows[0]["n_poisoned"] == 3
    with pytest.raises(ValueError, match="split"):
        evaluate_split(clean, triggered, 0, PixelCode(), params, "train", ["none"], attack_name="toy")


def test_report_joins_victim_defenses_and_sanitize_finding(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"ca": 0.9, "pa": 0.1, "asr": 0.85}))
    (tmp_path / "defenses.csv").write_text("defense,ca,pa,asr\nnone,88.0,10.0,90.0\nsampdetox,85.5,70.25,3.0\n")
    (tmp_path / "sanitize.json").write_text(json.dumps({"target_labels": [0], "flagged": 12, "tpr": 0.9,
                                                         "fpr": 0.01}))
    rows = write_report(tmp_path / "metrics.json", tmp_path / "defenses.csv", tmp_path / "report",
                        tmp_path / "sanitize.json")
    assert rows[0] == {"defense": "victim (full test)", "ca": 90.0, "pa": 10.0, "asr": 85.0}
    assert rows[2] == {"defense": "sampdetox", "ca": 85.5, "pa": 70.25, "asr": 3.0}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| sampdetox | 85.5 | 70.25 | 3.0 |" in md and "TPR 90.0 %, FPR 1.0 %" in md
    assert "target label(s) found: 0" in md
