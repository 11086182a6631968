"""train_purifier: loss goes down, checkpoints resume bit-exactly, evaluation and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detoxops.config import DiffusionConfig
from detoxops.diffusion import build_unet, evaluate_denoising, load_purifier, train_purifier
from detoxops.diffusion.purifier import Purifier
from detoxops.diffusion.schedule import NoiseSchedule
from detoxops.models import build_classifier, save_classifier


def test_training_reduces_denoising_error(tmp_path, tiny_train_cfg, ramp_images):
    cfg = tiny_train_cfg(120)
    images = ramp_images()
    torch.manual_seed(cfg.train.seed)
    untrained = Purifier(build_unet(cfg.unet), NoiseSchedule.from_config(cfg.schedule))
    before = evaluate_denoising(untrained, images[:16], (50,), restore=False)[50]
    purifier, history = train_purifier(images, cfg, tmp_path / "p", progress=False)
    after = evaluate_denoising(purifier, images[:16], (50,), restore=False)[50]
    assert history["step"] == 120 and len(history["loss"]) == 12
    assert history["loss"][-1][1] < history["loss"][0][1]
    assert after["eps_mse"] < 0.8 * before["eps_mse"]
    assert after["psnr_x0_oneshot"] > before["psnr_x0_oneshot"]
    # the output folder is a loadable diffusers folder with the EMA weights
    loaded = load_purifier(tmp_path / "p")
    x = torch.zeros(1, 3, 8, 8)
    assert torch.equal(loaded(x, torch.tensor([3])), purifier(x, torch.tensor([3])))


def test_resume_is_bit_identical(tmp_path, tiny_train_cfg, ramp_images):
    images = ramp_images(32)
    straight, _ = train_purifier(images, tiny_train_cfg(20), tmp_path / "a", progress=False)
    train_purifier(images, tiny_train_cfg(10), tmp_path / "b", progress=False)
    resumed, history = train_purifier(images, tiny_train_cfg(20), tmp_path / "b", progress=False)
    assert history["step"] == 20 and [s for s, _ in history["loss"]] == [10, 20]
    for p, q in zip(straight.unet.parameters(), resumed.unet.parameters(), strict=True):
        assert torch.equal(p, q)


def test_time_budget_stops_after_a_checkpoint(tmp_path, tiny_train_cfg, ramp_images):
    _, history = train_purifier(ramp_images(32), tiny_train_cfg(10_000), tmp_path / "c", progress=False,
                                time_budget_s=0.0)
    assert history["step"] == 1
    assert json.loads((tmp_path / "c" / "checkpoint" / "state.json").read_text())["step"] == 1


def test_sample_grid_and_imageset_input(tmp_path, tiny_train_cfg, ramp_images):
    from detoxops.data import from_arrays

    images = ramp_images(16)
    ds = from_arrays(images, np.zeros(16, dtype=np.int64), ["a"])
    train_purifier(ds, tiny_train_cfg(2, sample_every=2), tmp_path / "g", progress=False)
    grid = tmp_path / "g" / "samples" / "step_0000002.png"
    from PIL import Image

    assert Image.open(grid).size == (8 * 8, 5 * 8)  # 8 images; rows: clean + (noisy, restored) x 2 levels


def test_rejects_mismatched_images(tmp_path, tiny_train_cfg, ramp_images):
    with pytest.raises(ValueError, match="diffusion.unet"):
        train_purifier(np.zeros((4, 16, 16, 3), np.uint8), tiny_train_cfg(1), tmp_path / "x", progress=False)


class _Oracle:
    """A "purifier" that knows the clean images: its ε denoises every noisy batch exactly back to them."""

    def __init__(self, images: np.ndarray) -> None:
        self.x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.schedule = NoiseSchedule.linear()
        self.device = torch.device("cpu")

    def __call__(self, x_t, t):
        return self.schedule.predict_eps(x_t, t, self.x0.expand_as(x_t))


def test_evaluate_denoising_restores_with_an_oracle(ramp_images):
    """With the exact ε of a single image the one-shot x̂0 is perfect: PSNR of x̂0 ≫ noisy input."""
    images = ramp_images(1)
    m = evaluate_denoising(_Oracle(images), images, (120,), seed=0)[120]
    assert m["psnr_x0_oneshot"] > m["psnr_noisy"] + 30
    assert m["psnr_restored"] > m["psnr_noisy"] + 5
    assert m["eps_mse"] < 1e-8  # the oracle's ε is the noise that was added


def test_evaluate_denoising_scores_a_classifier_on_the_restorations(ramp_images):
    """Accuracy on clean / one-shot / restored images: a nearest-neighbour classifier of the clean images is right
    on every exact restoration (oracle ε) and the numbers are per cent of the images; PSNR is unchanged by it."""
    images = ramp_images(4)
    labels = np.array([3, 1, 4, 1])
    oracle = _Oracle(images)

    def nearest(batch: np.ndarray) -> np.ndarray:
        d = ((batch[:, None].astype(np.float64) - images[None].astype(np.float64)) ** 2).sum((2, 3, 4))
        return labels[d.argmin(1)]

    plain = evaluate_denoising(oracle, images, (120,), seed=0)[120]
    m = evaluate_denoising(oracle, images, (120,), seed=0, classify=nearest, labels=labels)[120]
    assert m["acc_clean"] == m["acc_oneshot"] == m["acc_restored"] == 100.0
    assert {k: m[k] for k in plain} == plain
    constant = evaluate_denoising(oracle, images, (120,), restore=False, classify=lambda b: np.full(len(b), 1),
                                  labels=labels)[120]
    assert constant["acc_clean"] == constant["acc_oneshot"] == 50.0 and "acc_restored" not in constant
    with pytest.raises(ValueError, match="one label per image"):
        evaluate_denoising(oracle, images, (120,), classify=nearest, labels=labels[:3])


def test_cli_train_and_eval(tmp_path):
    from detoxops.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["diffusion", "train", "--data", "digits", "--out", str(out), "--eval-images", "4", "--no-progress",
            "--set", "diffusion.train.steps=2", "--set", "diffusion.train.checkpoint_every=2",
            "--set", "diffusion.unet.block_out_channels=[8,16]", "--set", "diffusion.train.batch_size=4"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "one-shot denoising PSNR" in (out / "README.txt").read_text()
    assert json.loads((out / "denoising.json").read_text())["step"] == 2
    res = runner.invoke(app, ["diffusion", "eval", str(out), "--data", "digits", "--n", "2", "--levels", "3",
                              "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "m.json").read_text())["levels"]["3"]) >= {"psnr_noisy", "psnr_restored"}
    save_classifier(build_classifier("small_cnn", 10, 3, 16, width=4), tmp_path / "victim")
    res = runner.invoke(app, ["diffusion", "eval", str(out), "--data", "digits", "--n", "4", "--levels", "3",
                              "--victim", str(tmp_path / "victim"), "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    assert "accuracy (%) on the clean / one-shot / restored" in res.output
    level = json.loads((tmp_path / "v.json").read_text())["levels"]["3"]
    assert all(0.0 <= level[k] <= 100.0 and level[k] % 25 == 0 for k in ("acc_clean", "acc_oneshot", "acc_restored"))
    missing = runner.invoke(app, ["diffusion", "eval", str(out), "--data", "digits", "--n", "2", "--levels", "3",
                                  "--victim", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "--victim" in missing.output
    res = runner.invoke(app, ["diffusion", "export", str(out), str(tmp_path / "shipped")])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "shipped" / "checkpoint").exists()
    assert load_purifier(tmp_path / "shipped").dtype == torch.float32
    bad = runner.invoke(app, args[:5] + ["--set", "diffusion.unet.sample_size=32"])
    assert bad.exit_code == 2 and "sample_size" in bad.output


def test_init_starts_from_a_purifiers_weights_and_refuses_another_network(tmp_path, tiny_train_cfg, ramp_images):
    images = ramp_images(32)
    first, _ = train_purifier(images, tiny_train_cfg(20), tmp_path / "first", progress=False)
    # zero steps of training on: the start is exactly the given purifier's (EMA) weights
    same, _ = train_purifier(images, tiny_train_cfg(1, lr=1e-30, init=str(tmp_path / "first")), tmp_path / "on",
                             progress=False)
    for p, q in zip(first.unet.parameters(), same.unet.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-12)
    # a random start differs from it
    fresh, _ = train_purifier(images, tiny_train_cfg(1, lr=1e-30), tmp_path / "fresh", progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(first.unet.parameters(), fresh.unet.parameters(), strict=True))
    wider = DiffusionConfig.model_validate({**tiny_train_cfg(1).model_dump(), "unet": {"sample_size": 8,
                                            "block_out_channels": [16, 16]},
                                            "train": {**tiny_train_cfg(1).train.model_dump(),
                                                      "init": str(tmp_path / "first")}})
    with pytest.raises(ValueError, match=r"diffusion.train.init: .* is not a diffusion.unet network"):
        train_purifier(images, wider, tmp_path / "wider", progress=False)


def test_bf16_precision_trains_and_fp32_is_the_reference(tmp_path, tiny_train_cfg, ramp_images):
    from detoxops.devices import bf16_autocast

    assert bf16_autocast("fp32", torch.device("cpu")) is False and bf16_autocast("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32"):
        bf16_autocast("fp16", torch.device("cpu"))
    images = ramp_images(32)
    fp32, h32 = train_purifier(images, tiny_train_cfg(60, precision="fp32"), tmp_path / "fp32", progress=False)
    bf16, h16 = train_purifier(images, tiny_train_cfg(60, precision="bf16"), tmp_path / "bf16", progress=False)
    assert any(not torch.equal(p, q) for p, q in zip(fp32.unet.parameters(), bf16.unet.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in bf16.unet.parameters())  # autocast: the weights stay fp32
    # both learn, to within 20 % of each other's loss
    assert h16["loss"][-1][1] < h16["loss"][0][1] and abs(h16["loss"][-1][1] - h32["loss"][-1][1]) < 0.2 * h32[
        "loss"][-1][1]


def test_lr_schedules_decay_over_the_last_steps():
    from detoxops.config import DiffusionTrainConfig
    from detoxops.diffusion.train import lr_factor

    const = DiffusionTrainConfig(steps=10)
    assert [lr_factor(s, const) for s in range(10)] == [1.0] * 10
    linear = DiffusionTrainConfig(steps=10, lr_schedule="linear", lr_decay_steps=4)
    assert [lr_factor(s, linear) for s in range(10)] == pytest.approx([1] * 6 + [1.0, 0.75, 0.5, 0.25])
    cosine = DiffusionTrainConfig(steps=10, lr_schedule="cosine")  # the whole run
    factors = [lr_factor(s, cosine) for s in range(10)]
    assert factors[0] == pytest.approx(1.0) and factors[5] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors[:-1], factors[1:], strict=True)) and 0 < factors[-1] < 0.03


def test_an_anneal_resumes_a_constant_run_and_follows_its_schedule(tmp_path, tiny_train_cfg, ramp_images):
    images = ramp_images(32)
    # a budget run at a constant rate, then trained on to step 20 with a linear decay over its last 10 steps
    train_purifier(images, tiny_train_cfg(10), tmp_path / "a", progress=False)
    annealed, history = train_purifier(images, tiny_train_cfg(20, lr_schedule="linear", lr_decay_steps=10,
                                                              checkpoint_every=5), tmp_path / "a", progress=False)
    lr = 2e-3
    # recorded at checkpoints: the rate of the update that reached the step
    assert [s for s, _ in history["lr"]] == [10, 15, 20]
    assert [r for _, r in history["lr"]] == pytest.approx([lr, lr * 0.6, lr * 0.1])
    # the same as an uninterrupted run with that schedule (the optimizer's rate follows the config on resume)
    straight, _ = train_purifier(images, tiny_train_cfg(20, lr_schedule="linear", lr_decay_steps=10,
                                                        checkpoint_every=5), tmp_path / "b", progress=False)
    for p, q in zip(straight.unet.parameters(), annealed.unet.parameters(), strict=True):
        assert torch.equal(p, q)
