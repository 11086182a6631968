"""SIG (Barni et al. 2019) as in BackdoorBench ``attack/sig.py``: a clean-label horizontal sinusoid.

x'(i, j, c) = clip(x(i, j, c) + Δ·sin(2π·j·f / W), 0, 255), truncated to uint8, with Δ = 40 and f = 6 cycles
per image width (so nothing to rescale with the image size), identical in every channel and row.
Clean-label: only target-class training images are poisoned, ``round(ratio·N)`` requested from them (at 0.1 on
balanced CIFAR-10 that is every target image).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import register


class SIGOptions(AttackOptions):
    delta: float = Field(default=40.0, gt=0.0)
    """Amplitude in grey levels (``sig_delta``); the same at train and test time."""
    frequency: float = Field(default=6.0, gt=0.0)
    """Cycles across the image width (``sig_f``)."""


@register
class SIG(Attack):
    name: ClassVar[str] = "sig"
    clean_label: ClassVar[bool] = True
    Options: ClassVar[type[AttackOptions]] = SIGOptions
    options: SIGOptions

    def signal(self) -> np.ndarray:
        """The additive (S, S, 1) float pattern Δ·sin(2π·j·f/W)."""
        w = self.image_size
        cols = np.arange(w, dtype=np.float64)
        wave = self.options.delta * np.sin(2.0 * np.pi * cols * self.options.frequency / w)
        return np.broadcast_to(wave[None, :, None], (w, w, 1))

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        return truncate_to_uint8(images.astype(np.float64) + self.signal()[None])
