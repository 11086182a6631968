"""Shared test doubles for the defense tests."""

from __future__ import annotations

import pytest
import torch

from detoxops.config import ScheduleConfig
from detoxops.diffusion import NoiseSchedule


class GrayOracle:
    """A purifier whose eps(x_t, t) denoises towards a flat mid-gray image (0 in diffusion space): restored pixels
    become 0.5, so what a defense restores is visible exactly."""

    def __init__(self) -> None:
        self.schedule = NoiseSchedule.from_config(ScheduleConfig())
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def __call__(self, x_t, t):
        return self.schedule.predict_eps(x_t, t, torch.zeros_like(x_t))


@pytest.fixture
def gray_oracle() -> GrayOracle:
    return GrayOracle()
