"""`detoxops sanitize` end to end on tiny data: purified ImageSet, decisions.csv, anomaly_index.json, and the
optional content-addressed dataset version."""

import json

import numpy as np
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.config import ScheduleConfig, UNetConfig
from detoxops.data import ImageSet
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, save_purifier
from detoxops.models import build_classifier, save_classifier


def test_sanitize_cli_writes_dataset_decisions_and_version(tmp_path):
    rng = np.random.default_rng(0)
    poisoned = np.zeros(12, bool)
    poisoned[:2] = True
    train = ImageSet(rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), np.tile(np.arange(3), 4).astype(np.int64),
                     ["a", "b", "c"], poisoned=poisoned)
    train.save(tmp_path / "train")
    save_classifier(build_classifier("small_cnn", 3, image_size=8, width=4), tmp_path / "victim")
    save_purifier(Purifier(build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16])),
                           NoiseSchedule.from_config(ScheduleConfig())), tmp_path / "purifier")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [
        "sanitize", "--data", str(tmp_path / "train"), "--victim", str(tmp_path / "victim"), "--out", str(out),
        "--purifier", str(tmp_path / "purifier"), "--version-root", str(tmp_path / "versions"), "--no-progress",
        "-s", "dataelixir.T=4", "-s", "dataelixir.rounds=2", "-s", "dataelixir.keep_last=2", "-s", "dataelixir.tau=2",
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])  # stderr carries the "params from" note
    assert {"target_labels", "flagged", "tpr", "fpr", "version"} <= set(summary)
    purified = ImageSet.load(out)
    assert len(purified) == 12 and purified.meta["sanitize"]["method"] == "dataelixir"
    assert np.array_equal(purified.poisoned, poisoned)
    rows = (out / "decisions.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("index,")
    assert "kl_index" in json.loads((out / "anomaly_index.json").read_text())
    assert (tmp_path / "versions" / "purified").is_dir() and summary["version"].startswith(str(tmp_path))


def test_sanitize_cli_names_a_missing_input(tmp_path):
    res = CliRunner().invoke(app, ["sanitize", "--data", str(tmp_path / "nope"), "--victim", str(tmp_path / "v"),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "nope" in res.output


def test_sanitize_cli_refuses_an_existing_out_before_any_work(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    res = CliRunner().invoke(app, ["sanitize", "--data", str(tmp_path / "nope"), "--victim", str(tmp_path / "v"),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "already exists" in res.output and "--force" in res.output
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"
