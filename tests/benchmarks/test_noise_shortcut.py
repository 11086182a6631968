"""benchmarks/noise_shortcut.py and drift_levels.py on the committed store. The store's LF victim is trained with
its poison stored as JPEG like the rest of the JPEG source (`victims.jpeg_quality`), the remedy for the "not
JPEG-like" shortcut docs/attacks.md measured: one grey level of noise must not fire it, a JPEG pass of its triggered
images must keep its ASR, and SampDetox's restorations must not drift its clean labels into its target. (The
drift check's positive case is tested with a smooth-backdoor classifier in tests/defenses/test_drift.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import drift_levels  # noqa: E402
import noise_shortcut  # noqa: E402


@pytest.fixture
def store():
    if not all((ROOT / "victims" / "cifar10-fast" / v).is_dir() for v in ("clean", "lf", "badnets")):
        pytest.skip("the committed CIFAR-10 victim store is not in this checkout")


def test_the_jpeg_stored_lf_victim_reads_its_trigger_not_noise(cifar_archive, store, tmp_path):
    out = tmp_path / "noise.json"
    assert noise_shortcut.main(["--victims", "clean,lf", "--data", str(cifar_archive), "--n", "100", "--sigmas",
                                "0,1", "--jpeg", "75", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["rows"]
    lf, clean = rows["lf"], rows["clean"]
    assert lf["n"] == 90 and lf["noise"]["0"] < 10 and lf["noise"]["1"] < 10
    assert lf["trigger_asr"] > 80 and lf["jpeg"]["trigger_asr"] > 70  # the pattern, not the format, is the cue
    assert clean["noise"]["1"] < 10 and "trigger_asr" not in clean
    assert "--victims clean,lf" in record["command"] and record["machine"]["threads"] == 1


def test_sampdetox_does_not_drift_the_jpeg_stored_lf_victim(cifar_archive, store, tmp_path):
    out = tmp_path / "drift.json"
    args = ["--victims", "lf,badnets", "--data", str(cifar_archive), "--n-clean", "20", "--n-poisoned", "10",
            "--setting", "faithful:profile=faithful", "--out", str(out)]
    assert drift_levels.main(args) == 0
    rows = {r["victim"]: r for r in json.loads(out.read_text())["rows"]}
    assert not rows["lf"]["drift_flagged"] and rows["lf"]["asr_none"] > 70
    assert not rows["badnets"]["drift_flagged"] and rows["badnets"]["asr_none"] > 80
    assert drift_levels.main(args) == 0  # resumes: nothing measured twice
    assert len(json.loads(out.read_text())["rows"]) == 2
