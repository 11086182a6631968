"""benchmarks/trigger_natural_asr.py and benchmarks/dataelixir_purified_shortcut.py: which models count as never
having seen a trigger, and the purified versions a shortcut check feeds them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import dataelixir_purified_shortcut as shortcut  # noqa: E402
import trigger_natural_asr as natural  # noqa: E402
from detoxops.data import ImageSet  # noqa: E402


@pytest.mark.parametrize(("below_seed", "kind"), [
    ("ftrojan/victim", "this_attack"),
    ("ftrojan/elixir-a34a3fd9fd/retrained", "this_attack"),
    ("ftrojan/elixir-a34a3fd9fd/decomposition/drop_target_poison", "this_attack"),
    ("ftrojan/elixir-a34a3fd9fd/decomposition/drop_poison", "unpoisoned"),  # trained without any poisoned image
    ("reference", "unpoisoned"),
    ("reference-t101", "unpoisoned"),
    ("clean/elixir-a34a3fd9fd/retrained", "unpoisoned"),
    ("blended/victim", "victim"),  # another attack's backdoor: left out of the summary
    ("blended/elixir-a34a3fd9fd/retrained", "other_sanitised"),
    ("blended/elixir-a34a3fd9fd/decomposition/as_sanitised-t101", "other_sanitised"),
])
def test_model_kind(below_seed, kind, tmp_path):
    assert natural.model_kind(tmp_path / "seed0" / below_seed, tmp_path, "ftrojan") == kind


def test_summarise_per_kind():
    rows = [{"kind": "unpoisoned", "target_share": v} for v in (0.019, 0.082, 0.551)]
    rows += [{"kind": "this_attack", "target_share": 1.0}]
    out = natural.summarise(rows)
    assert out["unpoisoned"] == {"models": 3, "min": 0.019, "median": 0.082, "max": 0.551, "above_5_percent": 2}
    assert out["this_attack"]["models"] == 1 and "victim" not in out


def test_non_target_sample_draws_per_class_without_the_target():
    labels = np.repeat(np.arange(3), 5)
    test = ImageSet(images=np.zeros((15, 4, 4, 3), np.uint8), labels=labels, class_names=["a", "b", "c"])
    idx = shortcut.non_target_sample(test, target=0, per_class=2, seed=0)
    assert np.bincount(labels[idx], minlength=3).tolist() == [0, 2, 2]
    assert np.array_equal(idx, shortcut.non_target_sample(test, 0, 2, 0))  # seeded


def test_purified_versions_chain_rounds_deterministically():
    from detoxops.config import DataElixirConfig, ScheduleConfig, UNetConfig
    from detoxops.diffusion import NoiseSchedule, Purifier, build_unet

    unet = build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16]))
    purifier = Purifier(unet, NoiseSchedule.from_config(ScheduleConfig()))
    cfg = DataElixirConfig(T=6, sampler="ddim", ddim_stride=2)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    versions = shortcut.purified_versions(purifier, images, cfg, rounds=2, seed=3, batch=2)
    assert len(versions) == 3 and versions[0] is images
    assert all(v.shape == images.shape and v.dtype == np.uint8 for v in versions)
    assert not np.array_equal(versions[1], images) and not np.array_equal(versions[2], versions[1])
    again = shortcut.purified_versions(purifier, images, cfg, rounds=2, seed=3, batch=2)
    assert all(np.array_equal(a, b) for a, b in zip(versions, again, strict=True))
