"""benchmarks/victim_fit_check.py: ASR of a store victim on its own training images and on test images, each
triggered by the victim's attack record; the BadNets victim has learned its backdoor on both."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import victim_fit_check as bench  # noqa: E402


def test_the_badnets_victim_fits_its_backdoor_on_training_and_test_images(cifar_archive, tmp_path):
    if not (ROOT / "victims" / "cifar10-fast" / "badnets").is_dir():
        pytest.skip("the committed CIFAR-10 victim store is not in this checkout")
    out = tmp_path / "fit.json"
    assert bench.main(["--victim", "cifar10-fast/badnets", "--data", str(cifar_archive), "--n", "40",
                       "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    for split in ("train", "test"):
        row = record["splits"][split]
        assert row["n"] == 40 and row["asr"] >= 80 and row["clean_accuracy"] >= 60
