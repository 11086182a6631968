"""`detoxops detox calibrate`: the patch repair's thresholds for a purifier, written where the `repair` profile
finds them; without a calibration that profile is refused with the fix named."""

from __future__ import annotations

import json
import shutil

import numpy as np
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.data import ImageSet
from detoxops.defenses.patch_repair import CALIBRATION_FILE, PatchCalibration
from detoxops.diffusion.unet import shipped_purifier_dir

runner = CliRunner()
FAST = ["--set", "sampdetox.patch.stride=500", "--set", "sampdetox.patch.repair_stride=500",  # 2 passes per inpainting
        "--set", "sampdetox.patch.confirm=none"]  # no classifier to confirm with (tested apart below)


def _images(tmp_path, n=6):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return ImageSet(images=images, labels=np.arange(n) % 2, class_names=["a", "b"]).save(tmp_path / "clean")


def test_calibrate_writes_the_purifier_folders_file_and_the_repair_profile_uses_it(tmp_path):
    purifier = shutil.copytree(shipped_purifier_dir("digits-16"), tmp_path / "purifier")
    images = _images(tmp_path)

    refused = runner.invoke(app, ["detox", "run", str(images), "--purifier", str(purifier), "--out",
                                  str(tmp_path / "out"), "--defense", "repair", "--no-progress", *FAST])
    assert refused.exit_code != 0 and "detoxops detox calibrate" in refused.output

    result = runner.invoke(app, ["detox", "calibrate", str(images), "--purifier", str(purifier), "--limit", "4",
                                 "--batch", "2", "--no-progress", *FAST])
    assert result.exit_code == 0, result.output
    cal = PatchCalibration.load(purifier / CALIBRATION_FILE)
    assert cal.meta["images"] == 4 and cal.map_settings["stride"] == 500 and len(cal.peaks) == 4
    assert "the gate is" in result.output and not list(purifier.glob("*.tmp"))

    done = runner.invoke(app, ["detox", "run", str(images), "--purifier", str(purifier), "--out", str(tmp_path / "out"),
                               "--defense", "repair", "--no-progress", *FAST])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "maps.npz").is_file()
    # the record names the settings the defense ran with: the repair variant, not params.yaml's default profile
    record = ImageSet.load(tmp_path / "out").meta["transforms"][-1]
    assert record["defense"] == "repair" and record["profile"] == "repair" and record["patch_repair"] is True

    # label confirmation queries a classifier: without --victim the command says so
    confirm = runner.invoke(app, ["detox", "run", str(images), "--purifier", str(purifier), "--out",
                                  str(tmp_path / "out3"), "--defense", "repair", "--no-progress", *FAST,
                                  "--set", "sampdetox.patch.confirm=label"])
    assert confirm.exit_code != 0 and "--victim" in confirm.output
    nobody = runner.invoke(app, ["detox", "run", str(images), "--purifier", str(purifier), "--out",
                                 str(tmp_path / "out3"), "--defense", "repair", "--no-progress", *FAST,
                                 "--set", "sampdetox.patch.confirm=label", "--victim", str(tmp_path / "no-model")])
    assert nobody.exit_code != 0 and "--victim" in nobody.output

    # a calibration made with other map settings is refused, not silently applied
    mismatch = runner.invoke(app, ["detox", "run", str(images), "--purifier", str(purifier), "--out",
                                   str(tmp_path / "out2"), "--defense", "repair", "--no-progress"])
    assert mismatch.exit_code != 0 and "other context-map settings" in mismatch.output


def test_calibrate_refuses_bad_input_and_keeps_an_existing_file(tmp_path):
    purifier = shutil.copytree(shipped_purifier_dir("digits-16"), tmp_path / "purifier")
    (purifier / CALIBRATION_FILE).write_text('{"keep": true}')
    wrong_size = ImageSet(images=np.zeros((3, 8, 8, 3), np.uint8), labels=np.zeros(3, np.int64),
                          class_names=["a"]).save(tmp_path / "small")
    result = runner.invoke(app, ["detox", "calibrate", str(wrong_size), "--purifier", str(purifier), "--no-progress"])
    assert result.exit_code != 0 and "the purifier expects 16x16x3" in result.output
    assert json.loads((purifier / CALIBRATION_FILE).read_text()) == {"keep": True}
    result = runner.invoke(app, ["detox", "calibrate", str(tmp_path / "nowhere"), "--purifier", str(purifier)])
    assert result.exit_code != 0 and "not found" in result.output
    result = runner.invoke(app, ["detox", "calibrate", str(_images(tmp_path)), "--purifier", str(purifier),
                                 "--limit", "1"])
    assert result.exit_code != 0 and "--limit must be at least 2" in result.output
