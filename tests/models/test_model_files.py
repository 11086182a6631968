"""Model files are validated before anything is allocated (issue #23): wrong-shape, truncated, NaN and
non-safetensors weights, out-of-bounds configs — one error type, ModelFileError, naming the file and tensor."""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from detoxops.config import UNetConfig
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet
from detoxops.diffusion.unet import WEIGHTS_NAME, load_purifier, save_purifier
from detoxops.modelfiles import ModelFileError
from detoxops.models import build_classifier, load_classifier, save_classifier
from detoxops.models.io import CONFIG, WEIGHTS


@pytest.fixture
def classifier_dir(tmp_path):
    model = build_classifier("small_cnn", 3, 3, 8, seed=0, width=4)
    return save_classifier(model, tmp_path / "clf")


@pytest.fixture
def purifier_dir(tmp_path):
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(sample_size=8, in_channels=3, block_out_channels=[8, 16], layers_per_block=1))
    return save_purifier(Purifier(unet, NoiseSchedule.linear(1000)), tmp_path / "pur")


def _edit_weights(path, edit) -> None:
    state = load_file(path)
    edit(state)
    save_file(state, path)


def _edit_json(path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_valid_classifier_round_trip(classifier_dir):
    model = load_classifier(classifier_dir)
    x = torch.rand(2, 3, 8, 8)
    reference = build_classifier("small_cnn", 3, 3, 8, seed=0, width=4).eval()
    torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update({"head.weight": torch.zeros(5, 7)}), r"'head.weight' has shape \[5, 7\].*needs \[3, 64\]"),
        (lambda s: s.pop("head.bias"), r"missing \['head.bias'\]"),
        (lambda s: s.update({"extra": torch.zeros(1)}), r"unexpected \['extra'\]"),
        (lambda s: s["head.weight"].__setitem__((0, 0), float("nan")), r"'head.weight' holds 1 NaN / inf"),
        (lambda s: s["head.bias"].__setitem__(1, float("inf")), r"'head.bias' holds 1 NaN / inf"),
        (lambda s: s.update({"head.weight": s["head.weight"].to(torch.int32)}), r"dtype I32"),
    ],
)
def test_classifier_weights_that_do_not_fit(classifier_dir, edit, match):
    _edit_weights(classifier_dir / WEIGHTS, edit)
    with pytest.raises(ModelFileError, match=match):
        load_classifier(classifier_dir)


def test_truncated_and_foreign_weight_files(classifier_dir):
    weights = classifier_dir / WEIGHTS
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(ModelFileError, match="truncated"):
        load_classifier(classifier_dir)
    weights.write_bytes(whole[:4])
    with pytest.raises(ModelFileError, match="truncated"):
        load_classifier(classifier_dir)
    weights.write_bytes(b"\x80\x04\x95" + bytes(200))  # a pickle's opening bytes: not a safetensors header
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_classifier(classifier_dir)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_classes": 10**9}, r"num_classes = 1000000000 is outside \[2, 100000\]"),
        ({"width": 10**6}, r"width = 1000000 is outside"),
        ({"image_size": 1e9}, r"image_size = 1000000000.0 is outside"),
        ({"num_classes": True}, r"num_classes must be an integer"),
        ({"arch": "os.system"}, r"unknown arch 'os.system'"),
    ],
)
def test_classifier_config_bounds(classifier_dir, changes, match):
    _edit_json(classifier_dir / CONFIG, **changes)
    with pytest.raises(ModelFileError, match=match):
        load_classifier(classifier_dir)


def test_classifier_config_not_json(classifier_dir):
    (classifier_dir / CONFIG).write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_classifier(classifier_dir)


def test_valid_purifier_round_trip(purifier_dir):
    loaded = load_purifier(purifier_dir)
    assert loaded.image_size == 8 and loaded.schedule.T == 1000


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sample_size": 1e9}, r"sample_size = 1000000000.0 is outside \[4, 1024\]"),
        ({"sample_size": 10**9}, r"sample_size = 1000000000 is outside"),
        ({"block_out_channels": [8192, 8192]}, r"block_out_channels\[0\] = 8192 is outside \[1, 2048\]"),
        ({"block_out_channels": [2048, 2048], "layers_per_block": 8}, r"network of [\d,]+ parameters, over"),
        ({"num_class_embeds": 10**8}, r"num_class_embeds = 100000000 is outside"),
        ({"down_block_types": ["DownBlock2D"]}, "one block type per"),
        ({"layers_per_block": "1; rm -rf /"}, "layers_per_block must be an integer"),
    ],
)
def test_unet_config_bounds_refused_before_allocating(purifier_dir, changes, match):
    _edit_json(purifier_dir / "config.json", **changes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ModelFileError, match=match):
        load_purifier(purifier_dir)
    assert time.perf_counter() - started < 10
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak RSS grew {grown_mb:.0f} MB"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update({"conv_in.weight": torch.zeros(8, 3, 5, 5)}), r"'conv_in.weight' has shape"),
        (lambda s: s["conv_out.bias"].__setitem__(0, float("nan")), r"'conv_out.bias' holds 1 NaN"),
        (lambda s: s.pop("conv_out.bias"), "do not match config.json"),
    ],
)
def test_unet_weights_that_do_not_fit(purifier_dir, edit, match):
    _edit_weights(purifier_dir / WEIGHTS_NAME, edit)
    with pytest.raises(ModelFileError, match=match):
        load_purifier(purifier_dir)


def test_truncated_unet_and_bad_schedule(purifier_dir):
    weights = purifier_dir / WEIGHTS_NAME
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_purifier(purifier_dir)
    weights.write_bytes(whole)
    sched = purifier_dir / "scheduler_config.json"
    original = sched.read_text()
    _edit_json(sched, num_train_timesteps=10**9, trained_betas=None)
    with pytest.raises(ModelFileError, match="num_train_timesteps = 1000000000 is outside"):
        load_purifier(purifier_dir)
    sched.write_text(original)
    _edit_json(sched, trained_betas=[0.1, float("nan")] + [0.1] * 998)
    with pytest.raises(ModelFileError, match="trained_betas"):
        load_purifier(purifier_dir)
    sched.write_text(original)
    assert np.isfinite(load_purifier(purifier_dir).schedule.betas.numpy()).all()


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)  # every existing `except ValueError` caller reports it
