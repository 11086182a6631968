"""benchmarks/victim_table.py: the store's attack table read from the victims' training records — issue #19's
bounds per row, whether the recipe is current (the md5 each stage recorded in dvc.lock), and how the poison was
stored (as computed or re-encoded as JPEG at the source's quality)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import victim_table as bench  # noqa: E402


def _victim(store: Path, name: str, ca: float, asr: float | None, jpeg: int | None = None) -> None:
    folder = store / "toy" / name
    folder.mkdir(parents=True)
    record = None if name == "clean" else {"name": name} | ({} if jpeg is None else {"jpeg_quality": jpeg})
    meta = {"metrics": {"ca": ca, "pa": None if asr is None else 0.1, "asr": asr},
            "history": {"seconds": [100.0, 50.5]}, "attack_record": record}
    (folder / "classifier.json").write_text(json.dumps({"arch": "fast_cnn", "meta": meta}))


def test_rows_check_the_bounds_and_say_how_the_poison_was_stored(tmp_path):
    store = tmp_path / "victims"
    _victim(store, "clean", 0.90, None)
    _victim(store, "badnets", 0.89, 0.97, jpeg=75)   # within 2 points, ASR >= 90: met
    _victim(store, "blended", 0.85, 0.99)            # CA drop 5 points
    _victim(store, "wanet", 0.86, 0.30, jpeg=75)     # loop attack under 85
    _victim(store, "sig", 0.81, 0.98)                # clean-label: its cost is reported
    by = {r["attack"]: r for r in bench.rows(store, "toy")}
    assert by["badnets"]["bound"] == "met"
    assert by["blended"]["bound"] == "CA drop > 2"
    assert by["wanet"]["bound"] == "ASR < 85"
    assert by["sig"]["bound"] == "clean-label: CA cost 9.0"
    assert by["badnets"]["train_seconds"] == 150.5
    assert by["badnets"]["poison_jpeg_quality"] == 75 and by["blended"]["poison_jpeg_quality"] is None
    md = bench.markdown(list(by.values()), "cmd", "toy")
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert lines["badnets"].endswith("| JPEG 75 |") and lines["blended"].endswith("| as computed |")
    assert lines["clean"].endswith("| – |")
    # percentages round half up (0.8815 is 88.149999... as a float)
    assert bench.markdown([{**by["badnets"], "ca": 0.8815}], "cmd", "toy").count("| 88.2 |") == 1


def test_recipe_is_current_only_when_the_lock_matches_the_files_now(tmp_path):
    store, root = tmp_path / "victims", tmp_path
    recipe = root / "src/detoxops/models/fast_train.py"
    recipe.parent.mkdir(parents=True)
    recipe.write_text("recipe v2\n")
    md5 = hashlib.md5(recipe.read_bytes()).hexdigest()
    store.mkdir()
    lock = {"stages": {"clean": {"deps": [{"path": "src/detoxops/models/fast_train.py", "md5": md5}]},
                       "attack@badnets": {"deps": [{"path": "src/detoxops/models/fast_train.py", "md5": "0" * 32}]},
                       "attack_lossless@ftrojan": {"deps": [{"path": "src/detoxops/models/fast_train.py", "md5": md5}]},
                       "attack_recipe_augment@wanet": {"deps": [{"path": "src/detoxops/models/fast_train.py",
                                                                 "md5": "0" * 32}]}}}
    (store / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert bench.recipe_current(store, "clean", root) is True
    assert bench.recipe_current(store, "attack@badnets", root) is False
    assert bench.recipe_current(store, "attack@lc", root) is None
    assert bench.recipe_current(store, "attack@ftrojan", root) is True  # a victims.lossless_attacks stage
    assert bench.recipe_current(store, "attack@wanet", root) is False  # a victims.recipe_augment_attacks stage


def test_main_writes_both_files_and_refuses_an_empty_store(tmp_path):
    store = tmp_path / "victims"
    _victim(store, "clean", 0.90, None)
    _victim(store, "badnets", 0.89, 0.97)
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    assert bench.main(["--store", str(store), "--name", "toy", "--out-json", str(out_json), "--out-md", str(out_md)]) == 0
    record = json.loads(out_json.read_text())
    assert {r["attack"] for r in record["rows"]} == {"clean", "badnets"}
    assert "--name toy" in record["command"] and "| badnets |" in out_md.read_text()
    assert bench.main(["--store", str(store), "--name", "none", "--out-json", str(tmp_path / "x.json")]) == 1
    assert not (tmp_path / "x.json").exists()
