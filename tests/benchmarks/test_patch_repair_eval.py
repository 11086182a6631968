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


def test_global_points_parse_typed_fields_and_fail_on_bad_ones():
    assert bench.global_points("") == [{}]
    assert bench.global_points("t1=10; t1=30,t2=200 ;profile=faithful") == [
        {"t1": 10}, {"t1": 30, "t2": 200}, {"profile": "faithful"}]
    assert bench.global_label({}) == "repair" and bench.global_label({"t2": 200, "t1": 30}) == "t1=30,t2=200"
    with pytest.raises(SystemExit, match="'t1' is not KEY=VALUE"):
        bench.global_points("t1")
    with pytest.raises(SystemExit, match="t1=-3"):
        bench.global_points("t1=-3")  # validated by the config before any image is defended
    with pytest.raises(SystemExit, match="set by the benchmark"):
        bench.global_points("sampler=ddpm")


def test_the_selection_rule_keeps_global_points_apart():
    def row(attack, point, ca, asr):
        return {"attack": attack, "fire_rate": 0.5, "confirm": "label", "global": point, "ca": ca, "pa": 50,
                "asr": asr, "repaired_clean": 0.0, "repaired_triggered": 0.5}

    none = {"a": {"ca": 90.0}, "b": {"ca": 80.0}}
    rows = [row("a", "repair", 88, 30), row("b", "repair", 78, 20),
            row("a", "t2=200", 86, 10), row("b", "t2=200", 75, 6),
            {k: v for k, v in row("a", "repair", 88, 30).items() if k != "global"}]  # older rows: the repair point
    table = bench.rule_table(rows, none)
    assert [t["global"] for t in table] == ["repair", "t2=200"]
    assert table[1]["mean_asr"] == 8.0 and table[1]["mean_ca_drop"] == 4.5
    assert bench.choose(table, 5.0)["global"] == "t2=200" and bench.choose(table, 3.0)["global"] == "repair"


def test_report_averages_seeds_against_no_defense_and_leaves_incomplete_settings_out(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    def row(attack, seed, point, ca, asr):
        return {"attack": attack, "split": "test", "seed": seed, "fire_rate": 0.5, "confirm": "label",
                "global": point, "patch": "calibrated", "ca": ca, "pa": 90 - asr, "asr": asr,
                "repaired_clean": 0.02, "repaired_triggered": 0.8}

    rows = [row("a", 0, "repair", 80, 10), row("a", 1, "repair", 84, 20),
            row("b", 0, "repair", 70, 0), row("b", 1, "repair", 72, 4),
            row("a", 0, "t2=200", 70, 0)]  # one seed of one attack only: left out
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(bench, "clean_test", lambda source: None)
    monkeypatch.setattr(bench, "no_defense", lambda args, clean, split, name, seed: {
        "ca": 90.0 if name == "a" else 75.0, "pa": float(seed), "asr": 100.0 - seed})
    args = SimpleNamespace(rows=[tmp_path / "r.json"], data="x", n_clean=100, n_poisoned=100)
    result = bench.report(args)
    assert result["seeds"] == [0, 1] and result["attacks"] == ["a", "b"]
    none, repair = result["settings"]
    assert none["setting"] == "none" and none["per_attack"]["a"]["asr"] == 99.5
    a = repair["per_attack"]["a"]
    assert (a["ca"], a["asr"], a["asr_range"], a["ca_drop"]) == (82.0, 15.0, [10.0, 20.0], 8.0)
    assert repair["mean_asr"] == (15.0 + 2.0) / 2 and len(result["settings"]) == 2
    md = bench.markdown(dict(result, command="c"))
    assert "| none | 90.0 / 0.5 / 99.5 | 75.0 / 0.5 / 99.5 | 99.5 | 82.5 |" in md
    assert "| repair | calibrated | gate 0.5 label | 82.0 / 75.0 / 15.0 | 71.0 / 88.0 / 2.0 | 8.5 | 76.5 |" in md
    (tmp_path / "v.json").write_text(json.dumps({"rows": [dict(rows[0], split="val")]}))
    with pytest.raises(SystemExit, match="report needs"):
        bench.report(SimpleNamespace(**dict(vars(args), rows=[tmp_path / "v.json"])))
