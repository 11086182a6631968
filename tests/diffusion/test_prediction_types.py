"""Purifiers that predict x_0 (``sample``) or v instead of ε: the wrapper returns ε̂ either way, training learns the
chosen target, the type travels in ``scheduler_config.json``, and a CPU-second budget bounds a training run."""

from __future__ import annotations

import json

import pytest
import torch

from detoxops.config import ScheduleConfig
from detoxops.diffusion import build_unet, evaluate_denoising, load_purifier, save_purifier, train_purifier
from detoxops.diffusion.purifier import Purifier
from detoxops.diffusion.schedule import NoiseSchedule
from detoxops.modelfiles import ModelFileError


class _Fixed(torch.nn.Module):
    """A stand-in UNet whose output is set by the test (diffusers' ``.sample`` attribute)."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"sample_size": output.shape[-1], "in_channels": output.shape[1]})()

    def forward(self, x, t):
        return type("O", (), {"sample": self.output})()


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_the_wrapper_turns_an_exact_x0_or_v_prediction_into_the_true_noise(kind):
    sched = NoiseSchedule.from_config(ScheduleConfig())
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    levels = torch.tensor([1, 20, 300, 900])
    x_t = sched.q_sample(x0, levels, noise)
    ab = sched.abar[levels].view(-1, 1, 1, 1).float()
    exact = x0 if kind == "sample" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    purifier = Purifier(_Fixed(exact), sched, prediction_type=kind, precision="fp32")
    torch.testing.assert_close(purifier(x_t, levels), noise, atol=2e-3 if kind == "sample" else 1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        Purifier(_Fixed(exact), sched, prediction_type="x0")


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_training_learns_the_chosen_target_and_the_folder_remembers_it(tmp_path, kind, tiny_train_cfg, ramp_images):
    images = ramp_images()
    cfg = tiny_train_cfg(120, prediction_type=kind)
    torch.manual_seed(0)
    untrained = Purifier(build_unet(cfg.unet), NoiseSchedule.from_config(cfg.schedule), prediction_type=kind)
    before = evaluate_denoising(untrained, images[:16], (50,), restore=False)[50]
    purifier, history = train_purifier(images, cfg, tmp_path / "p", progress=False)
    after = evaluate_denoising(purifier, images[:16], (50,), restore=False)[50]
    assert history["prediction_type"] == kind and after["psnr_x0_oneshot"] > before["psnr_x0_oneshot"] + 3
    sched_cfg = json.loads((tmp_path / "p" / "scheduler_config.json").read_text())
    assert sched_cfg["prediction_type"] == kind
    loaded = load_purifier(tmp_path / "p")
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([30, 200])
    assert loaded.prediction_type == kind and torch.equal(loaded(x, t), purifier(x, t))
    # resuming the run with another target would mix two objectives in one set of weights
    with pytest.raises(ValueError, match="prediction_type"):
        train_purifier(images, tiny_train_cfg(130, prediction_type="epsilon"), tmp_path / "p", progress=False)


def test_a_bad_prediction_type_in_the_folder_is_refused(tmp_path, tiny_train_cfg):
    sched = NoiseSchedule.from_config(ScheduleConfig())
    cfg = tiny_train_cfg(1).unet
    save_purifier(Purifier(build_unet(cfg), sched), tmp_path / "p")
    path = tmp_path / "p" / "scheduler_config.json"
    assert json.loads(path.read_text())["prediction_type"] == "epsilon"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "noise"}))
    with pytest.raises(ModelFileError, match="prediction_type must be one of"):
        load_purifier(tmp_path / "p")


def test_cpu_budget_counts_every_session_of_the_run(tmp_path, tiny_train_cfg, ramp_images):
    images = ramp_images(32)
    _, history = train_purifier(images, tiny_train_cfg(100_000), tmp_path / "p", progress=False, cpu_budget_s=0.5)
    first_step, spent = history["step"], history["cpu_seconds"]
    assert 0 < first_step < 100_000 and spent >= 0.5
    # the budget is spent: a rerun of the same command trains nothing more
    _, again = train_purifier(images, tiny_train_cfg(100_000), tmp_path / "p", progress=False, cpu_budget_s=0.5)
    assert again["step"] == first_step
    # a larger budget resumes and stops again
    _, more = train_purifier(images, tiny_train_cfg(100_000), tmp_path / "p", progress=False, cpu_budget_s=spent + 0.5)
    assert more["step"] > first_step and more["cpu_seconds"] >= spent + 0.5
