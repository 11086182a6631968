"""`detoxops detox drift`: the guard's label drift on clean images, as a report and as a deployment gate."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.data import ImageSet
from detoxops.defenses.drift import label_drift
from detoxops.diffusion.unet import shipped_purifier_dir
from detoxops.models import build_classifier, save_classifier

runner = CliRunner()


def _inputs(tmp_path):
    rng = np.random.default_rng(0)
    images = ImageSet(images=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), labels=np.arange(6) % 3,
                      class_names=["a", "b", "c"]).save(tmp_path / "clean")
    model = build_classifier("small_cnn", 3, image_size=16, width=4)
    return images, save_classifier(model, tmp_path / "victim")


def test_drift_reports_and_gates(tmp_path, monkeypatch):
    images, victim = _inputs(tmp_path)
    args = ["detox", "drift", str(images), "--victim", str(victim), "--purifier",
            str(shipped_purifier_dir("digits-16")), "--limit", "4", "--no-progress"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "drift.json")])
    assert result.exit_code == 0, result.output
    assert "label drift on 4 clean images" in result.output
    report = json.loads((tmp_path / "drift.json").read_text())
    assert report["n"] == 4 and len(report["inflow"]) == 3 and abs(sum(report["inflow"])) < 1e-9
    assert report["settings"]["profile"] == "robust" and report["class_names"] == ["a", "b", "c"]
    assert report["flagged"] == (report["top_inflow"] >= 0.1) and report["data_version"]

    # a flagged drift fails the gate with status 3 (the drift itself is tested with real defenses elsewhere)
    flagged = label_drift(np.array([1, 2, 1, 2]), np.array([0, 0, 0, 2]), 3, alpha=1.0)
    monkeypatch.setattr("detoxops.defenses.guard.Detoxifier.check_drift", lambda self, *a, **k: flagged)
    gate = runner.invoke(app, [*args, "--fail-on-flag"])
    assert gate.exit_code == 3 and "FLAGGED" in gate.output and "class a" in gate.output
    monkeypatch.undo()

    bad = runner.invoke(app, [*args, "--max-inflow", "0"])
    assert bad.exit_code != 0 and "max_inflow" in bad.output
    missing = runner.invoke(app, [*args[:4], str(tmp_path / "nobody"), *args[5:]])
    assert missing.exit_code != 0 and "--victim" in missing.output
