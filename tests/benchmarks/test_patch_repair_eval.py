"""benchmarks/patch_repair_eval.py: the stored context maps stand in for the computed ones, found by image content
through the defense's diffusion-space round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import patch_repair_eval as bench  # noqa: E402


def test_map_lookup_returns_each_images_stored_map_in_batch_order():
    from detoxops.data import to_tensor

    rng = np.random.default_rng(0)
    clean, triggered = (rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    clean_maps, trig_maps = rng.random((3, 8, 8)), rng.random((3, 8, 8))
    lookup = bench.MapLookup([clean, triggered], [clean_maps, trig_maps])
    batch = np.stack([triggered[2], clean[0], triggered[0]])
    got = lookup(to_tensor(batch) * 2 - 1, torch.Generator())
    assert got.shape == (3, 1, 8, 8) and got.dtype == torch.float32
    np.testing.assert_allclose(got[:, 0].numpy(), np.stack([trig_maps[2], clean_maps[0], trig_maps[0]]), rtol=1e-6)
    with pytest.raises(SystemExit, match="without a stored context map"):
        lookup(to_tensor(255 - batch) * 2 - 1, torch.Generator())


def test_stored_context_maps_are_computed_once_per_setting(tmp_path, monkeypatch):
    from detoxops.config import PatchRepairConfig
    from detoxops.defenses.patch_repair import PatchRepair
    from detoxops.diffusion import load_purifier
    from detoxops.diffusion.unet import shipped_purifier_dir

    repair = PatchRepair(load_purifier(shipped_purifier_dir("cifar10-32")),
                         PatchRepairConfig(stride=500, offsets="aligned"))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first, seconds = bench.stored_context_maps(tmp_path, "val_clean", repair, images, 2, 0, "p")
    assert first.shape == (2, 32, 32) and np.isfinite(first).all() and len(list(tmp_path.glob("maps_val_clean_*.npz"))) == 1

    computed = []
    monkeypatch.setattr(bench, "context_maps", lambda *a: computed.append(a) or np.zeros((2, 32, 32)))
    again, again_seconds = bench.stored_context_maps(tmp_path, "val_clean", repair, images, 2, 0, "p")
    np.testing.assert_array_equal(again, first)
    assert computed == [] and again_seconds == seconds > 0  # reused with the time it took, not recomputed
    bench.stored_context_maps(tmp_path, "val_clean", repair, images, 2, 1, "p")  # another seed: another entry
    bench.stored_context_maps(tmp_path, "val_clean", repair, images[::-1].copy(), 2, 0, "p")  # other images
    assert len(computed) == 2 and len(list(tmp_path.glob("maps_val_clean_*.npz"))) == 3


def test_confirm_modes_can_be_limited_to_one_rate():
    assert bench.confirm_modes("none,label", "0.3") == ["none", "label"]
    assert bench.confirm_modes("label,none@0.05", "0.05") == ["label", "none"]
    assert bench.confirm_modes("label,none@0.05", "0.3") == ["label"]
    with pytest.raises(SystemExit, match="unknown confirm setting 'both'"):
        bench.confirm_modes("both", "0.3")


def test_the_selection_rule_takes_the_lowest_mean_asr_within_the_ca_bound():
    def row(attack, rate, confirm, ca, asr, changed=0.0):
        return {"attack": attack, "fire_rate": rate, "confirm": confirm, "ca": ca, "pa": 100 - asr, "asr": asr,
                "repaired_clean": changed, "repaired_triggered": 0.5}

    none = {"a": {"ca": 90.0}, "b": {"ca": 80.0}}
    rows = [row("a", 0.05, "label", 88, 20), row("b", 0.05, "label", 78, 10),      # drop 2, ASR 15
            row("a", 0.3, "label", 86, 4), row("b", 0.3, "label", 76, 6, 0.02),    # drop 4, ASR 5
            row("a", 0.5, "label", 80, 2), row("b", 0.5, "label", 70, 2),          # drop 10: over the bound
            row("a", 0.3, "none", 86, 5, 0.3)]                                       # not run on b: left out
    table = bench.rule_table(rows, none)
    assert [(t["fire_rate"], t["confirm"]) for t in table] == [(0.05, "label"), (0.3, "label"), (0.5, "label")]
    assert table[1]["mean_asr"] == 5.0 and table[1]["mean_ca_drop"] == 4.0 and table[1]["clean_changed"] == 0.01
    chosen = bench.choose(table, 5.0)
    assert (chosen["fire_rate"], chosen["confirm"]) == (0.3, "label")
    assert bench.choose(table, 1.0) is None
    # a tie on ASR goes to the setting that changes fewer clean images
    tie = [dict(table[1], mean_asr=15.0), table[0]]
    assert bench.choose(tie, 5.0)["fire_rate"] == 0.05
