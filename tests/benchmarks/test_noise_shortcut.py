"""benchmarks/noise_shortcut.py and drift_levels.py on the committed store: the LF victim (poison as computed on the
JPEG source) reads one grey level of noise as its trigger and a JPEG pass undoes it; the clean victim does not;
SampDetox's restorations drift the LF victim's clean labels into its target and not the BadNets victim's."""

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


def test_the_lf_victim_reads_noise_as_its_trigger_and_jpeg_undoes_it(cifar_archive, store, tmp_path):
    out = tmp_path / "noise.json"
    assert noise_shortcut.main(["--victims", "clean,lf", "--data", str(cifar_archive), "--n", "100", "--sigmas",
                                "0,1", "--jpeg", "75", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    lf, clean = rows["lf"], rows["clean"]
    assert lf["n"] == 90 and lf["noise"]["0"] < 10 and lf["noise"]["1"] > 50 and lf["jpeg"]["noise_1"] < 10
    assert lf["trigger_asr"] > 80 and clean["noise"]["1"] < 10 and "trigger_asr" not in clean


def test_sampdetox_drifts_the_lf_victims_clean_labels_into_its_target(cifar_archive, store, tmp_path):
    out = tmp_path / "drift.json"
    args = ["--victims", "lf,badnets", "--data", str(cifar_archive), "--n-clean", "20", "--n-poisoned", "10",
            "--setting", "faithful:profile=faithful", "--out", str(out)]
    assert drift_levels.main(args) == 0
    rows = {r["victim"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["lf"]["drift_flagged"] and rows["lf"]["drift_class"] == rows["lf"]["target"] == 0
    assert not rows["badnets"]["drift_flagged"] and rows["badnets"]["asr_none"] > 80
    assert drift_levels.main(args) == 0  # resumes: nothing measured twice
    assert len(json.loads(out.read_text())["rows"]) == 2
