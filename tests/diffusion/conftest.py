"""Tiny UNets (8/16 channels, 8x8 images) and schedules shared by the diffusion tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detoxops.config import DiffusionConfig, UNetConfig
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_cfg() -> UNetConfig:
    return UNetConfig(sample_size=8, in_channels=3, block_out_channels=[8, 16], layers_per_block=1)


@pytest.fixture
def tiny_purifier(tiny_cfg) -> Purifier:
    torch.manual_seed(0)
    return Purifier(build_unet(tiny_cfg), NoiseSchedule.linear(1000))


@pytest.fixture
def tiny_train_cfg():
    """Factory: the DiffusionConfig of a tiny UNet (8/16 channels, 8x8) trained ``steps`` steps; ``train`` keys
    override the training settings."""
    def make(steps: int, **train) -> DiffusionConfig:
        return DiffusionConfig.model_validate({
            "unet": {"sample_size": 8, "block_out_channels": [8, 16]},
            "train": {"steps": steps, "batch_size": 16, "lr": 2e-3, "checkpoint_every": 10, "max_t": 300,
                      "device": "cpu", **train},
        })
    return make


@pytest.fixture
def ramp_images():
    """Factory: n smooth structured 8x8 images (a colour gradient per image) that a tiny net can learn to denoise."""
    def make(n: int = 64) -> np.ndarray:
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 1, 8)[None, :, None, None] * np.ones((1, 8, 8, 3))
        colours = rng.uniform(0, 1, (n, 1, 1, 3))
        return (255 * (0.2 + 0.6 * ramp * colours)).astype(np.uint8)
    return make
