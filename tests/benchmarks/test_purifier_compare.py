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


def test_entries_made_before_a_config_field_existed_keep_their_place(tmp_path):
    from detoxops.config import DiffusionConfig

    defaults = DiffusionConfig().model_dump(mode="json", exclude={"purifier", "precision"})
    now = defaults | {"train": defaults["train"] | {"steps": 100000000}}
    old_train = {k: v for k, v in now["train"].items() if k not in ("lr_schedule", "lr_decay_steps")}
    old = {"train": old_train, "unet": now["unet"], "schedule": now["schedule"]}
    rest = "cpu1800/n256/20,120,300/ddim0"
    entries = {bench.entry_key("base", old, rest): {"name": "base"}, "not a key": {"name": "odd"}}
    migrated = bench.migrate_keys(entries, defaults)
    # the key a rerun computes today (the new fields at their defaults) finds the old entry
    assert migrated[bench.entry_key("base", now, rest)] == {"name": "base"}
    assert migrated["not a key"] == {"name": "odd"}
    # a setting the entry did run with is never overwritten by a default
    other = bench.migrate_keys({bench.entry_key("v", old | {"train": old_train | {"lr": 0.001}}, rest): {}}, defaults)
    assert json.loads(next(iter(other)).split("/", 1)[1].rsplit("}/", 1)[0] + "}")["train"]["lr"] == 0.001
