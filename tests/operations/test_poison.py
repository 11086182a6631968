"""detoxops.operations.poison: what ``detoxops attack run`` writes, and the dataset version the Prefect task stores,
come from one function."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.config import load_params
from detoxops.data import ImageSet, load_splits, load_version, save_version
from detoxops.operations import poison


def _version(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(4), 10).astype(np.int64)
    ds = ImageSet(rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), labels, ["a", "b", "c", "d"])
    return save_version({"train": ds, "test": ds.subset(np.arange(20))}, None, "toy", source="t", at=tmp_path / "raw")


def test_the_cli_writes_what_the_operation_writes(tmp_path):
    raw = _version(tmp_path)
    overrides = [f"data.source={raw}", "data.image_size=16", "data.train_per_class=null",
                 "data.test_per_class=null", "attack.poison_ratio=0.25"]
    res = CliRunner().invoke(app, ["attack", "run", "--out", str(tmp_path / "cli"), "--no-progress",
                                   "--params", "params.yaml", *sum((["-s", o] for o in overrides), [])])
    assert res.exit_code == 0, res.output
    params = load_params("params.yaml", overrides)
    splits = load_splits(params.data.source, params.data, progress=False)
    outcome = poison(splits["train"], splits["test"], params.attack, out=tmp_path / "op",
                     source=str(params.data.source), progress=False)
    assert outcome.out == tmp_path / "op" and outcome.train.poisoned.sum() == 10
    files = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "op") for p in (tmp_path / "op").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "cli" / f).read_bytes() == (tmp_path / "op" / f).read_bytes(), f
    assert json.loads((tmp_path / "op" / "attack.json").read_text())["train"]["num_poisoned"] == 10


def test_as_a_version_with_the_clean_test_split_and_state(tmp_path):
    raw = _version(tmp_path)
    splits = load_version(raw)
    params = load_params(None, ["attack.name=badnets", "attack.target=1"])
    outcome = poison(splits["train"], splits["test"], params.attack, version_root=tmp_path / "data",
                     version_name="toy-badnets", source=str(raw), progress=False)
    stored = load_version(outcome.version)
    assert set(stored) == {"train", "test", "clean_test"} and (outcome.version / "attack_state").is_dir()
    assert stored["train"].content_hash() == outcome.train.content_hash()
    assert not np.any(stored["test"].original_labels == 1) and np.all(stored["test"].labels == 1)
    again = poison(splits["train"], splits["test"], params.attack, version_root=tmp_path / "data",
                   version_name="toy-badnets", source=str(raw), progress=False)
    assert again.version == outcome.version  # content-addressed: the same poisoning lands in the same version
