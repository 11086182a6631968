"""``benchmarks/sampdetox_eval.py sweep`` scores as the sweep operation does: on a tiny runs folder (two 8 px
attacks, untrained purifier) its rows are :func:`detoxops.defenses.evaluation.backdoor_rates` /
:func:`~detoxops.defenses.evaluation.map_measures` of the victims' predictions (what every sweep point's
``evaluate_defense`` row is made of), stored in percent, and its choice is :func:`detoxops.operations.sweep.choose`'s
on them. The shared stage-1 restorations, seeds and map AUC stay the script's own."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from detoxops.config import ScheduleConfig, UNetConfig, load_params
from detoxops.data import ImageSet
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, save_purifier
from detoxops.metrics import fraction_rates
from detoxops.models import load_classifier
from detoxops.operations import poison, train_victim
from detoxops.operations.sweep import choose

ROOT = Path(__file__).resolve().parents[2]
ATTACKS = ("badnets", "blended")
SETTINGS = "pixel_ssim soft120,diff@60/s0.2 mask300"
"""Substrings of the script's setting names: 2 localisers x 1 stage-2 option x 2 bases = 4 settings."""


def _script():
    if "sampdetox_eval" not in sys.modules:  # a script, not a package module; its dataclass needs it registered
        spec = importlib.util.spec_from_file_location("sampdetox_eval", ROOT / "benchmarks" / "sampdetox_eval.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sampdetox_eval"] = module
        spec.loader.exec_module(module)
    return sys.modules["sampdetox_eval"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """``<runs>/clean_test`` and ``<runs>/<attack>/{test,victim}`` (benchmarks/attack_table.py's layout), 3 classes of
    8 px images, victims trained a few epochs (predictions follow the input), and an untrained 8 px purifier."""
    root = tmp_path_factory.mktemp("sampdetox-eval")
    rng = np.random.default_rng(0)

    def split(n_per_class: int) -> ImageSet:
        labels = np.repeat(np.arange(3), n_per_class).astype(np.int64)
        return ImageSet(rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8), labels, ["a", "b", "c"])

    train, test = split(10), split(12)
    test.save(root / "runs" / "clean_test")
    for name in ATTACKS:
        params = load_params(None, [f"attack.name={name}", "attack.target=0", "attack.poison_ratio=0.3",
                                    "victim.arch=small_cnn", "victim.width=4", "victim.epochs=10",
                                    "victim.device=cpu"])
        outcome = poison(train, test, params.attack, out=root / "poisoned" / name, progress=False)
        outcome_test = ImageSet.load(root / "poisoned" / name / "test")
        outcome_test.save(root / "runs" / name / "test")
        train_victim(outcome.train, params.victim, root / "runs" / name / "victim", attack=outcome.attack,
                     progress=False)
    save_purifier(Purifier(build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16])),
                           NoiseSchedule.from_config(ScheduleConfig())), root / "purifier")
    return root


def _sweep(runs: Path, out: Path, monkeypatch) -> dict:
    args = ["sampdetox_eval.py", "sweep", "--runs", str(runs / "runs"), "--purifier", str(runs / "purifier"),
            "--attacks", ",".join(ATTACKS), "--n-clean", "18", "--n-poisoned", "10", "--t1s", "10",
            "--settings", SETTINGS, "--seeds", "0,1", "--batch", "16", "--threads", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", args)
    monkeypatch.chdir(ROOT)  # the script reads params.yaml (the rule's bound) from the checkout
    _script().main()
    return json.loads(out.read_text())


def test_sweep_rows_are_the_core_rates_and_the_choice_the_core_rule(runs, tmp_path, monkeypatch):
    from detoxops.defenses.evaluation import backdoor_rates

    result = _sweep(runs, tmp_path / "sweep.json", monkeypatch)
    settings = ["none", *result["settings"]]
    assert len(result["settings"]) == 4
    assert {(r["setting"], r["attack"], r["seed"]) for r in result["rows"]} == {
        (s, a, seed) for s in settings for a in ATTACKS for seed in (0, 1)}
    # the no-defense rows are the core's rates of the victims' own predictions on the script's halves
    script = _script()
    clean, attack_runs = script.load_runs(runs / "runs", list(ATTACKS))
    clean_idx = script.split_indices(clean, "val", 18)
    for run in attack_runs:
        pidx = script.poisoned_in_split(run, clean, clean_idx, "val", 10)
        victim = load_classifier(runs / "runs" / run.name / "victim")
        predict = script._classifier(victim)
        expected = backdoor_rates(predict(np.asarray(clean.images[clean_idx])), clean.labels[clean_idx],
                                  predict(np.asarray(run.poisoned.images[pidx])), run.poisoned.original_labels[pidx],
                                  run.target)
        for row in (r for r in result["rows"] if r["setting"] == "none" and r["attack"] == run.name):
            assert fraction_rates(row)["ca"] == pytest.approx(expected["ca"])
            assert fraction_rates(row)["pa"] == pytest.approx(expected["pa"])
            assert fraction_rates(row)["asr"] == pytest.approx(expected["asr"])
            assert (row["n_clean"], row["n_poisoned"]) == (expected["n_clean"], expected["n_poisoned"])
    # the settings' rows carry the map measures; rates are percent in the stored rows
    defended = [r for r in result["mean_rows"] if r["setting"] != "none"]
    assert all({"image_level", "clean_flagged_fraction"} <= set(r) for r in defended)
    assert all(0 <= r[k] <= 100 for r in result["rows"] for k in ("ca", "pa", "asr"))
    # the choice: operations.sweep.choose on the seed-mean rows (fractions), params.yaml's bound
    bound = load_params(ROOT / "params.yaml").sweep.max_ca_drop
    choice = choose([fraction_rates(r) for r in result["mean_rows"]], bound)
    assert result["selected"]["setting"] == choice.setting and result["rule"] == choice.why
