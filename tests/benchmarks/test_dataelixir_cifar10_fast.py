"""benchmarks/dataelixir_cifar10_fast.py end to end on tiny digits (16 px, 6 images per class, one-epoch victims,
one short DDIM round): the table's fields, and resume (a finished entry is skipped; an entry whose result was
lost is rebuilt from its stored stages without training or sanitising again)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import dataelixir_cifar10_fast as bench  # noqa: E402

TINY = [
    "--source", "digits", "--image-size", "16", "--train-per-class", "6", "--test-per-class", "3",
    "--attacks", "clean", "badnets", "--seed", "1",
    "-s", "victim.airbench.epochs=1", "-s", "dataelixir.T=20", "-s", "dataelixir.rounds=1",
    "-s", "dataelixir.sampler=ddim", "-s", "dataelixir.ddim_stride=10", "-s", "dataelixir.keep_last=2",
    "-s", "dataelixir.relabel_epochs=1", "-s", "dataelixir.finetune_epochs=0",
]


def run(tmp_path: Path) -> dict:
    args = [*TINY, "--work", str(tmp_path / "work"), "--results", str(tmp_path / "res"),
            "--docs-results", str(tmp_path / "docs"), "--name", "tiny"]
    assert bench.main(args) == 0
    return json.loads((tmp_path / "res" / "tiny.json").read_text())


def test_table_fields_and_resume(tmp_path):
    report = run(tmp_path)
    assert "dataelixir_cifar10_fast.py" in report["command"] and "--seed 1" in report["command"]
    assert report["machine"]["torch_threads"] == 1 and len(report["load_average_at_end"]) == 3
    clean, badnets = report["rows"]
    assert (clean["attack"], badnets["attack"]) == ("clean", "badnets")
    n = 6 * 10
    assert clean["n"] == badnets["n"] == n
    assert clean["poisoned"] == 0 and clean["true_target"] is None and clean["tpr"] is None
    assert badnets["poisoned"] == round(0.1 * n) and badnets["true_target"] == 0
    assert badnets["target_found"] == (badnets["target_labels"] == [0])
    for row in report["rows"]:
        assert row["dataelixir"]["T"] == 20 and row["dataelixir"]["sampler"] == "ddim"
        for key in ("fpr", "label_acc"):
            assert 0.0 <= row[key] <= 1.0
        for model in ("victim", "reference", "retrained"):
            assert 0.0 <= row[model]["acc"] <= 1.0
        # the reference (same subset, no poison) is one model per seed: the same scores in both rows
        assert row["reference"]["acc"] == clean["reference"]["acc"]
    # the clean entry's victim is the reference itself
    assert clean["victim"] == clean["reference"]
    for model in ("victim", "reference", "retrained"):
        assert set(badnets[model]) == {"acc", "asr", "pa"}
    assert set(badnets["stage_seconds"]) == {"poison", "victim_train", "sanitize", "retrain"}
    if clean["target_labels"]:
        assert set(clean["stage_seconds"]) == {"reference_train", "sanitize", "retrain"}
    else:  # nothing changed on the unpoisoned subset: the reference is the retrained model, not trained again
        assert set(clean["stage_seconds"]) == {"reference_train", "sanitize"}
        assert clean["retrained"] == clean["reference"]

    # the stored purified set agrees with the row: TPR / FPR / label accuracy recomputed from the files
    from detoxops.data import ImageSet
    from detoxops.metrics import detection_rates

    entry = tmp_path / "work" / "seed1" / "badnets"
    train = ImageSet.load(entry / "poisoned" / "train")
    purified = ImageSet.load(entry / badnets["elixir_key"] / "purified")
    tpr, fpr = detection_rates(train.labels, purified.labels, train.poisoned)
    assert (tpr, fpr) == (badnets["tpr"], badnets["fpr"])
    assert np.isclose((purified.labels == train.original_labels).mean(), badnets["label_acc"])
    assert badnets["label_changing_poisoned"] == int((train.poisoned & (train.labels != train.original_labels)).sum())
    assert badnets["tpr_label_changing"] is None or 0.0 <= badnets["tpr_label_changing"] <= 1.0
    assert clean["tpr_label_changing"] is None and clean["label_changing_poisoned"] == 0
    md = (tmp_path / "docs" / "tiny.md").read_text()
    assert "| badnets | 1 | 60 | 6 |" in md and "| clean | 1 | 60 | 0 | – (clean) |" in md

    # resume 1: everything finished -> rows read back unchanged
    result_file = entry / badnets["elixir_key"] / "result.json"
    mtime = result_file.stat().st_mtime_ns
    again = run(tmp_path)
    assert again["rows"] == report["rows"] and result_file.stat().st_mtime_ns == mtime

    # an entry finished before the label-changing TPR existed gets it from its stored sets, nothing rerun
    legacy = json.loads(result_file.read_text())
    for key in ("tpr_label_changing", "label_changing_poisoned"):
        legacy.pop(key)
    result_file.write_text(json.dumps(legacy))
    upgraded = run(tmp_path)["rows"][1]
    assert upgraded == badnets and "tpr_label_changing" in json.loads(result_file.read_text())

    # resume 2: the result lost, the stages kept -> rebuilt with nothing trained or sanitised again
    result_file.unlink()
    rebuilt = run(tmp_path)["rows"][1]
    assert rebuilt["stage_seconds"] == {}
    for key in ("target_labels", "tpr", "fpr", "label_acc", "victim", "reference", "retrained"):
        assert rebuilt[key] == badnets[key], key

    # resume 3: the work folder lost (a new machine), the committed table kept -> its rows stand, nothing recomputed
    import shutil

    shutil.copytree(tmp_path / "work", tmp_path / "work.kept")
    shutil.rmtree(tmp_path / "work" / "seed1")
    assert bench.main([*TINY[:TINY.index("--attacks")], "--attacks", "badnets", "--seed", "1",
                       *TINY[TINY.index("--seed") + 2:], "--work", str(tmp_path / "work"), "--results",
                       str(tmp_path / "res"), "--docs-results", str(tmp_path / "docs"), "--name", "tiny"]) == 0
    assert not (tmp_path / "work" / "seed1" / "badnets" / "victim").exists()  # no victim trained again
    table = json.loads((tmp_path / "res" / "tiny.json").read_text())["rows"]
    assert table[0] == rebuilt and table[1]["attack"] == "clean"  # the clean row, not redone, stays in the table
    shutil.rmtree(tmp_path / "work")
    shutil.move(tmp_path / "work.kept", tmp_path / "work")

    # the stage-2/3 re-analysis of the stored candidates reproduces the run's own sets, and refuses to recompute
    # with a purifier the shards were not made with
    import dataelixir_reanalyse_candidates as reanalyse
    from detoxops.diffusion import load_purifier, save_purifier
    from detoxops.diffusion.unet import shipped_purifier_dir

    out = tmp_path / "re.json"
    assert reanalyse.main([str(entry), "--elixir", badnets["elixir_key"], "--levels", "10", "0", "--levels", "0",
                           "--first-rounds", "1", "--out", str(out)]) == 0
    re_rows = json.loads(out.read_text())["rows"]
    own = next(r for r in re_rows if r["levels"] == [10, 0] and r["tau"] == badnets["dataelixir"]["tau"])
    assert own["rounds"] == 1 and own["candidates"] == 2 and own["target_labels"] == badnets["target_labels"]
    assert own["sets"] == badnets["sets"]
    other = load_purifier(shipped_purifier_dir("digits-16"))
    with torch.no_grad():
        next(other.unet.parameters()).add_(0.01)
    save_purifier(other, tmp_path / "other_purifier")
    with pytest.raises(SystemExit, match="made with purifier"):
        reanalyse.main([str(entry), "--elixir", badnets["elixir_key"], "--levels", "0", "--purifier",
                        str(tmp_path / "other_purifier")])

    # other DataElixir settings: a new elixir folder beside the first, the victim reused
    other = [*TINY, "-s", "dataelixir.keep_last=1", "--work", str(tmp_path / "work"), "--results",
             str(tmp_path / "res"), "--docs-results", str(tmp_path / "docs"), "--name", "tiny2"]
    assert bench.main(other) == 0
    rows = json.loads((tmp_path / "res" / "tiny2.json").read_text())["rows"]
    assert rows[1]["elixir_key"] != badnets["elixir_key"]
    assert set(rows[1]["stage_seconds"]) == {"sanitize", "retrain"}
    assert rows[1]["victim"] == badnets["victim"]


def test_detection_counts_label_changing_poison_apart():
    from detoxops.data import ImageSet

    # 10 samples, target 0. Poisoned: 0-3 (0 already had label 0: BackdoorBench draws from every class).
    original = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    raw = np.array([0, 0, 0, 0, 4, 5, 6, 7, 8, 9])
    poisoned = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    images = np.zeros((10, 4, 4, 3), dtype=np.uint8)
    names = [str(c) for c in range(10)]
    train = ImageSet(images=images, labels=raw, class_names=names, original_labels=original, poisoned=poisoned)
    # restored: 1 (right), 2 (wrong label, still a change); 3 missed; one clean sample (4) changed
    purified = ImageSet(images=images, labels=np.array([0, 1, 5, 0, 7, 5, 6, 7, 8, 9]), class_names=names)
    d = bench.detection(train, purified)
    assert d["tpr"] == 2 / 4 and d["fpr"] == 1 / 6
    assert d["label_changing_poisoned"] == 3 and d["tpr_label_changing"] == 2 / 3
    assert d["label_acc"] == 7 / 10 and d["label_acc_poisoned"] == 2 / 4


def test_an_older_elixir_folder_is_taken_over_only_for_its_own_purifier(tmp_path):
    from detoxops.config import Params

    params = Params()
    entry = tmp_path / "entry"
    legacy = entry / f"elixir-{bench.elixir_key(params)}"
    (legacy / "work" / "candidates" / "k").mkdir(parents=True)
    (legacy / "work" / "candidates" / "k" / "fingerprint.json").write_text(json.dumps({"purifier": "aaaa"}))
    (legacy / "result.json").write_text("{}")
    # another purifier: a folder of its own, the older results left alone
    other = bench.elixir_folder(entry, params, "bbbb")
    assert other.name == f"elixir-{bench.elixir_key(params, 'bbbb')}" and not other.exists() and legacy.is_dir()
    # the purifier the older folder was made with: renamed to the new key, results kept
    mine = bench.elixir_folder(entry, params, "aaaa")
    assert mine.name == f"elixir-{bench.elixir_key(params, 'aaaa')}" and (mine / "result.json").is_file()
    assert not legacy.exists() and mine.name != other.name


def test_the_elixir_key_counts_the_later_fields_only_when_they_differ_from_what_older_entries_ran():
    from detoxops.config import DataElixirConfig, Params

    later = bench.LATER_FIELDS
    assert later == {"mixed": "mode", "purify": "flagged", "relabel_images": "dataset", "relabel": "suspicious",
                     "relabel_view": "candidate", "distant_mads": 1.0, "target_rounds": 0, "relabel_init": "scratch",
                     "noise": "per_shard", "relabelled_image": "chosen"}
    # the paper's rules at 32 px (cpu_cifar10_quick: the CIFAR-10 default until 2026-12-07): the key without them
    params = Params(dataelixir=DataElixirConfig(profile="cpu_cifar10_quick"))
    key = bench.elixir_key(params, "aaaa")
    spec = {"dataelixir": params.dataelixir.resolved(32).model_dump(mode="json",
                                                                    exclude={"profile", "purifier", "purification_cache", *later}),
            "victim": params.victim.model_dump(mode="json"), "purifier": "aaaa"}
    import hashlib

    assert key == hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    for field, value in (("mixed", "suspicious"), ("purify", "target_label"), ("relabel_images", "candidates"),
                         ("relabel", "flagged"), ("relabel_view", "input"), ("distant_mads", 2.0),
                         ("target_rounds", 1), ("relabel_init", "victim"), ("noise", "per_image"),
                         ("relabelled_image", "input")):
        other = params.model_copy(update={"dataelixir": params.dataelixir.model_copy(update={field: value})})
        assert bench.elixir_key(other, "aaaa") != key
    # how a setting is asked for does not matter, what runs does: the profile's values = the same values set by hand
    by_hand = Params(dataelixir=DataElixirConfig(profile="cpu_cifar10_quick", T=150, mixed="suspicious",
                                                 purify="target_distant", target_rounds=1))
    assert bench.elixir_key(Params(), "aaaa") == bench.elixir_key(by_hand, "aaaa")
    # the DataElixir purifier setting is not in the key (the weights' fingerprint is)
    named = Params(dataelixir=DataElixirConfig(purifier="cifar10-32-v2"))
    assert bench.elixir_key(named, "aaaa") == bench.elixir_key(Params(), "aaaa")
    # nor where stored purifications are kept (it changes what is found, not what is computed)
    cached = Params(dataelixir=DataElixirConfig(noise="per_image", purification_cache="/somewhere"))
    assert bench.elixir_key(cached, "aaaa") == bench.elixir_key(Params(dataelixir=DataElixirConfig(noise="per_image")),
                                                                "aaaa")


def test_committed_entries_keep_their_keys():
    """Every committed row's work-folder key is recomputed from its recorded settings: a change of defaults or
    profiles must not move finished work to a new folder (rows of settings that no longer exist are skipped)."""
    import pydantic

    from detoxops.config import DataElixirConfig, load_params

    base = load_params(ROOT / "params.yaml", announce=False)
    checked = 0
    for path in sorted((ROOT / "benchmarks" / "results").glob("dataelixir_cifar10_fast*.json")):
        for row in json.loads(path.read_text())["rows"]:
            if "purifier" not in row:  # made before the purifier was part of the key
                continue
            recorded = {**bench.LATER_FIELDS, **row["dataelixir"]}  # rows made before a field existed ran its first
            try:
                cfg = DataElixirConfig(**recorded)
            except pydantic.ValidationError:
                continue
            params = bench.seed_params(base.model_copy(update={"dataelixir": cfg}), row["seed"], row["attack"])
            assert f"elixir-{bench.elixir_key(params, row['purifier'])}" == row["elixir_key"], (path.name, row["attack"])
            checked += 1
    assert checked >= 20


def _row(attack: str, seed: int) -> dict:
    scores = {"acc": 0.5, "asr": 0.1, "pa": 0.4}
    return {"attack": attack, "seed": seed, "n": 60, "poisoned": 6, "true_target": 0, "target_found": True,
            "target_labels": [0], "tpr": 1.0, "tpr_label_changing": 1.0, "fpr": 0.0, "label_acc": 1.0,
            "label_acc_poisoned": 1.0, "victim": scores, "reference": scores, "retrained": scores,
            "stage_seconds": {}, "elixir_key": "elixir-x", "purifier": "p"}


def test_runs_side_by_side_under_one_name_keep_each_others_rows(tmp_path, monkeypatch):
    """Two runs of other entries under one --name: the rows the other run wrote while this one worked stay."""
    results = tmp_path / "res"
    results.mkdir()
    table = results / "tiny.json"
    table.write_text(json.dumps({"rows": [_row("badnets", 1), _row("blended", 1)]}))  # an older run's table

    def entry_while_another_run_writes(attack, seed, *rest):
        # meanwhile the run beside this one finished its WaNet entry and rewrote the table (with the older rows)
        rows = json.loads(table.read_text())["rows"]
        table.write_text(json.dumps({"rows": [*rows, _row("wanet", 1)]}))
        return _row(attack, seed) | {"tpr": 0.5}

    monkeypatch.setattr(bench, "run_entry", entry_while_another_run_writes)
    assert bench.main(["--source", "digits", "--image-size", "16", "--train-per-class", "2", "--test-per-class", "1",
                       "--attacks", "badnets", "--seed", "1", "--work", str(tmp_path / "work"), "--results",
                       str(results), "--docs-results", str(tmp_path / "docs"), "--name", "tiny"]) == 0
    rows = json.loads(table.read_text())["rows"]
    assert sorted(r["attack"] for r in rows) == ["badnets", "blended", "wanet"]
    assert next(r for r in rows if r["attack"] == "badnets")["tpr"] == 0.5  # this run's row replaced the older one


def test_a_new_setting_finds_the_candidates_of_its_siblings_hard_linked(tmp_path):
    entry = tmp_path / "seed0" / "badnets"
    shard = entry / "elixir-aaaa" / "work" / "candidates" / "k1" / "shard-00000.npz"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"candidates")
    (entry / "elixir-bbbb" / "work" / "candidates" / "k2").mkdir(parents=True)
    new = entry / "elixir-cccc"
    assert bench.share_candidates(entry, new) == ["elixir-aaaa/k1", "elixir-bbbb/k2"]
    linked = new / "work" / "candidates" / "k1" / "shard-00000.npz"
    assert linked.read_bytes() == b"candidates" and linked.stat().st_ino == shard.stat().st_ino
    # a shard rewritten in the new folder (the store writes by rename) leaves the sibling's file as it was
    tmp = linked.with_name(".tmp")
    tmp.write_bytes(b"other")
    tmp.replace(linked)
    assert shard.read_bytes() == b"candidates"
    # nothing is linked twice, and a folder never links from itself
    assert bench.share_candidates(entry, new) == []


def test_a_seed_is_purified_once_then_every_entry_only_scores(tmp_path, purification_counter):
    """--purify-only in two parts fills the shared purification cache (every attack's images, each once) and trains
    the reference; the entries then purify nothing."""
    calls = purification_counter
    out = ["--work", str(tmp_path / "work"), "--results", str(tmp_path / "res"), "--docs-results",
           str(tmp_path / "docs"), "--name", "tiny"]
    with pytest.raises(SystemExit):  # refused without the per-image noise and a cache folder
        bench.main([*TINY, *out, "--purify-only", "--part", "0/2"])
    shared = [*TINY, "-s", "dataelixir.noise=per_image", "-s",
              f"dataelixir.purification_cache={tmp_path / 'cache'}", *out]
    assert bench.main([*shared, "--purify-only", "--part", "1/2"]) == 0
    assert not (tmp_path / "work" / "seed1" / "reference").exists()  # part 0 trains it
    assert bench.main([*shared, "--purify-only", "--part", "0/2"]) == 0
    assert (tmp_path / "work" / "seed1" / "reference" / "classifier.json").is_file()
    # 60 clean images once, and BadNets' 6 patched ones: its other 54 are the clean entry's
    assert calls["images"] == 66
    assert bench.main(shared) == 0
    assert calls["images"] == 66  # (no target_rounds at this profile: stage 4 purifies nothing more either)
    rows = json.loads((tmp_path / "res" / "tiny.json").read_text())["rows"]
    assert [r["dataelixir"]["noise"] for r in rows] == ["per_image", "per_image"]
    assert "reference_train" not in rows[0]["stage_seconds"]
    with pytest.raises(SystemExit):
        bench.main([*shared, "--purify-only", "--part", "2/2"])
    # the work folder lost, the table kept: the finished entries are not purified again
    import shutil

    shutil.rmtree(tmp_path / "work")
    shutil.rmtree(tmp_path / "cache")
    assert bench.main([*shared, "--purify-only", "--part", "0/1"]) == 0
    assert calls["images"] == 66
