"""`dvc repro victims/dvc.yaml` — the committed victim store's pipeline — in a scratch Git + DVC copy on a tiny
class-folder dataset made here: the clean victim, a BadNets victim (poison stored as JPEG), a Blended one (a
``victims.lossless_attacks`` entry: poison as computed) and a WaNet one (a ``victims.recipe_augment_attacks``
entry: no PostTensorTransform) are trained with the fast recipe, exported in fp16 with their training record,
loadable by name; a second repro retrains nothing and `dvc status` is clean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DVC = ROOT / ".venv" / "bin" / "dvc"

pytestmark = pytest.mark.skipif(
    not DVC.is_file() or shutil.which("git") is None,
    reason="needs the project's .venv (make setup) with dvc, and git",
)


def _class_folders(root: Path, classes: int = 3, per_class: int = 16, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[2 + 4 * c : 6 + 4 * c, 2:10] = 220  # a class-specific bar the victim can learn
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def test_victim_store_pipeline(tmp_path, scratch_repo):
    proj = tmp_path / "proj"
    proj.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src", proj / "src", ignore=ignore)
    (proj / "victims").mkdir()
    shutil.copy(ROOT / "victims" / "dvc.yaml", proj / "victims" / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", proj / ".dvcignore")
    (proj / ".venv").symlink_to(ROOT / ".venv")
    source = _class_folders(tmp_path / "images")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(proj / "data")
    params["victim"]["airbench"].update({"epochs": 2, "batch_size": 16, "widths": [8, 8, 8], "whiten_images": 32})
    params["victim"]["device"] = "cpu"
    params["victims"].update({"source": str(source), "attacks": ["badnets"], "lossless_attacks": ["blended"],
                              "recipe_augment_attacks": ["wanet"], "name": "toy-fast"})
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / ".gitignore").write_text(".venv\n/data/\n/runs/\n")
    env = scratch_repo.init(proj)

    log = scratch_repo.run([str(DVC), "repro", "victims/dvc.yaml"], proj, env, timeout=900)
    assert "Running stage 'victims/dvc.yaml:clean'" in log, log
    assert "Running stage 'victims/dvc.yaml:attack@badnets'" in log, log
    assert "Running stage 'victims/dvc.yaml:attack_lossless@blended'" in log, log
    assert "Running stage 'victims/dvc.yaml:attack_recipe_augment@wanet'" in log, log
    for name in ("clean", "badnets", "blended", "wanet"):
        spec = json.loads((proj / "victims" / "toy-fast" / name / "classifier.json").read_text())
        assert spec["arch"] == "fast_cnn" and spec["meta"]["fp16_weights"] is True
        assert spec["meta"]["params"]["arch"] == "fast_cnn"  # the training record travels with the weights
    badnets_meta = json.loads((proj / "victims/toy-fast/badnets/classifier.json").read_text())["meta"]
    assert badnets_meta["attack"] == "badnets"
    # victims.jpeg_quality reaches the attack through the stage command: poisoned images stored as the source's JPEG
    assert params["victims"]["jpeg_quality"] == 75
    assert badnets_meta["attack_record"]["jpeg_quality"] == 75
    # ... except for victims.lossless_attacks, whose changed images are stored as computed
    blended_meta = json.loads((proj / "victims/toy-fast/blended/classifier.json").read_text())["meta"]
    assert blended_meta["attack_record"].get("jpeg_quality") is None  # the record omits a null quality
    lock = yaml.safe_load((proj / "victims" / "dvc.lock").read_text())["stages"]
    # ... and victims.recipe_augment_attacks train without the loop's own batch transform, poison stored as JPEG
    wanet_record = json.loads((proj / "victims/toy-fast/wanet/classifier.json").read_text())["meta"]["attack_record"]
    assert wanet_record["options"]["post_transform"] is False and wanet_record["jpeg_quality"] == 75
    assert {"clean", "attack@badnets", "attack_lossless@blended", "attack_recipe_augment@wanet"} <= set(lock)

    # committed outputs + lock: nothing to retrain
    scratch_repo.run(["git", "add", "-A"], proj, env)
    scratch_repo.run(["git", "commit", "-q", "-m", "victims"], proj, env)
    again = scratch_repo.run([str(DVC), "repro", "victims/dvc.yaml"], proj, env, timeout=900)
    assert "Running stage" not in again, again
    assert "up to date" in scratch_repo.run([str(DVC), "status", "victims/dvc.yaml"], proj, env)

    listed = scratch_repo.run([str(proj / ".venv/bin/detoxops"), "victim", "list", "--store", "victims"], proj, env)
    assert "toy-fast/badnets" in listed and "toy-fast/clean" in listed and "toy-fast/blended" in listed
