"""Tiny UNets (8/16 channels, 8x8 images) and schedules shared by the diffusion tests."""

from __future__ import annotations

import pytest
import torch

from detoxops.config import UNetConfig
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
