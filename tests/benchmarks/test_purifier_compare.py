"""benchmarks/purifier_compare.py on digits with a 2-CPU-second budget: every candidate trains to the same CPU, its
own settings reach the network, the table is written, and a rerun keeps the finished entries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import purifier_compare as bench  # noqa: E402


def test_candidates_train_to_the_same_cpu_budget_and_resume(tmp_path, capsys):
    args = ["--data", "digits", "--cpu-budget", "2", "--n", "16", "--levels", "20,120", "--work", str(tmp_path / "w"),
            "--set", "diffusion.unet.block_out_channels=[8,16]", "--set", "diffusion.train.batch_size=8",
            "--candidate", "base:", "--candidate", "v:train.prediction_type=v_prediction",
            "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")]
    assert bench.main(args) == 0
    entries = json.loads((tmp_path / "r.json").read_text())["entries"]
    by_name = {e["name"]: e for e in entries.values()}
    assert set(by_name) == {"base", "v"}
    for e in by_name.values():
        assert e["cpu_seconds"] >= 2 and e["steps"] > 0 and set(e["metrics"]) == {"20", "120"}
    sched = json.loads((tmp_path / "w" / "v" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    md = (tmp_path / "r.md").read_text()
    assert "| v | `diffusion.train.prediction_type=v_prediction` |" in md
    capsys.readouterr()
    assert bench.main(args) == 0
    assert capsys.readouterr().out.count("done before, kept") == 2


def test_bad_candidates_are_refused():
    with pytest.raises(SystemExit, match="NAME:OVERRIDE"):
        bench.parse_candidate("no-colon")
    with pytest.raises(SystemExit, match="plain NAME"):
        bench.parse_candidate("a/b:train.lr=1")
    assert bench.parse_candidate("w:unet.attention=true; train.lr=0.001") == (
        "w", ["diffusion.unet.attention=true", "diffusion.train.lr=0.001"])
