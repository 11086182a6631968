"""flows/stages.py's plain entry points (no Prefect, no MLflow): the ``train_purifier`` stage's rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detoxops.data import ImageSet, save_version
from detoxops.diffusion import load_purifier
from flows.stages import purifier_stage


def _version(tmp_path, size: int):
    rng = np.random.default_rng(0)
    ds = ImageSet(rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), np.arange(8) % 2, ["a", "b"])
    return save_version({"train": ds, "test": ds}, None, "toy", source="test", at=tmp_path / f"raw{size}")


def test_purifier_stage_copies_the_shipped_one(tmp_path):
    record = purifier_stage(_version(tmp_path, 16), tmp_path / "purifier", "params.yaml")
    assert record["origin"] == "shipped:digits-16"
    assert json.loads((tmp_path / "purifier" / "origin.json").read_text()) == record
    assert load_purifier(tmp_path / "purifier").image_size == 16


def test_purifier_stage_trains_when_nothing_fits(tmp_path):
    """8x8 images: no configured or shipped purifier, so the stage trains one (2 steps here) at that size."""
    record = purifier_stage(_version(tmp_path, 8), tmp_path / "purifier", "params.yaml",
                            ["diffusion.train.steps=2", "diffusion.train.batch_size=4",
                             "diffusion.train.checkpoint_every=1"])
    assert record["origin"] == "trained" and record["image_size"] == 8
    assert load_purifier(tmp_path / "purifier").image_size == 8


def test_purifier_stage_reports_a_missing_configured_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffusion.purifier"):
        purifier_stage(_version(tmp_path, 16), tmp_path / "purifier", "params.yaml",
                       [f"diffusion.purifier={tmp_path / 'nope'}"])
    assert not (tmp_path / "purifier").exists()
