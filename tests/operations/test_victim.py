"""detoxops.operations.train_victim: ``detoxops victim train`` and the Prefect task train the same model."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.config import load_params
from detoxops.data import ImageSet, load_splits, save_version
from detoxops.operations import poison, train_victim

TIMING = {"train_seconds", "train_cpu_seconds", "command"}


def test_the_cli_trains_and_records_what_the_operation_does(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(4), 10).astype(np.int64)
    ds = ImageSet(rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), labels, ["a", "b", "c", "d"])
    raw = save_version({"train": ds, "test": ds.subset(np.arange(20))}, None, "toy", source="t", at=tmp_path / "raw")
    overrides = [f"data.source={raw}", "data.image_size=16", "data.train_per_class=null", "data.test_per_class=null",
                 "victim.arch=small_cnn", "victim.width=4", "victim.epochs=1", "victim.batch_size=8"]
    params = load_params("params.yaml", overrides)
    splits = load_splits(params.data.source, params.data, progress=False)
    run = poison(splits["train"], splits["test"], params.attack, out=tmp_path / "poisoned", source=str(raw),
                 progress=False)
    res = CliRunner().invoke(app, ["victim", "train", "--poisoned", str(tmp_path / "poisoned"), "--out",
                                   str(tmp_path / "cli"), "--no-progress", "--params", "params.yaml",
                                   *sum((["-s", o] for o in overrides), [])])
    assert res.exit_code == 0, res.output
    outcome = train_victim(run.train, params.victim, tmp_path / "op", attack=run.attack, clean_test=splits["test"],
                           triggered=run.test, progress=False,
                           record={"command": "-", "seed": params.victim.seed, "data_source": str(raw),
                                   "attack_record": json.loads((tmp_path / "poisoned" / "attack.json").read_text())})
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (tmp_path / "op" / "model.safetensors").read_bytes()
    cli = json.loads((tmp_path / "cli" / "classifier.json").read_text())["meta"]
    op = json.loads((tmp_path / "op" / "classifier.json").read_text())["meta"]
    assert list(cli) == list(op) and {k: v for k, v in cli.items() if k not in TIMING} == {
        k: v for k, v in op.items() if k not in TIMING}
    assert set(outcome.metrics) == {"ca", "pa", "asr", "ca_tta2", "pa_tta2", "asr_tta2"}
    assert op["params"] == params.victim.model_dump(mode="json")  # the recipe DataElixir's relabelling reuses


def test_an_auto_victim_is_the_architecture_the_images_call_for(tmp_path, monkeypatch):
    from detoxops.config import VictimConfig

    rng = np.random.default_rng(1)
    labels = np.tile(np.arange(2), 8).astype(np.int64)
    small = ImageSet(rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), labels, ["a", "b"])
    large = ImageSet(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), labels, ["a", "b"])
    cfg = VictimConfig(arch="auto", width=4, epochs=1, batch_size=8,
                       airbench={"epochs": 1, "batch_size": 8, "widths": [8, 8, 8], "whiten_images": 16})
    got_small = train_victim(small, cfg, tmp_path / "small", progress=False)
    few = train_victim(large, cfg, tmp_path / "few", progress=False)  # 32 px but 16 images: too few for airbench
    assert (got_small.arch, few.arch) == ("small_cnn", "small_cnn")
    monkeypatch.setattr(VictimConfig, "AUTO_FAST_MIN_IMAGES", 16)  # a tiny set stands for a large one
    got_large = train_victim(large, cfg, tmp_path / "large", progress=False)
    assert got_large.arch == "fast_cnn"
    assert json.loads((tmp_path / "large" / "classifier.json").read_text())["arch"] == "fast_cnn"
