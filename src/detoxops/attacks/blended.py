"""Blended (Chen et al. 2017) as in BackdoorBench ``attack/blended.py``: x' = (1 − α)·x + α·T, α = 0.2.

T is BackdoorBench's ``hello_kitty.jpeg`` resized (bilinear) to the image size. That file is not available
here: the default T is the procedural cartoon of :func:`~detoxops.attacks.substitutes.cartoon_blend_pattern`;
``pattern_path`` takes any user image instead (resized the same way).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import register
from detoxops.attacks.substitutes import cartoon_blend_pattern, load_image_file


class BlendedOptions(AttackOptions):
    alpha: float = Field(default=0.2, ge=0.0, le=1.0)
    """Blend weight at training time (``attack_train_blended_alpha``)."""
    test_alpha: float | None = Field(default=None, ge=0.0, le=1.0)
    """Blend weight at test time (``attack_test_blended_alpha``); ``None`` = ``alpha``."""
    pattern_path: str | None = None
    """User blend image; ``None`` = the procedural cartoon substitute for Hello Kitty."""


@register
class Blended(Attack):
    name: ClassVar[str] = "blended"
    Options: ClassVar[type[AttackOptions]] = BlendedOptions
    options: BlendedOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        p = self.options.pattern_path
        self.pattern = load_image_file(p, self.image_size) if p else cartoon_blend_pattern(self.image_size)

    def blend(self, images: np.ndarray, alpha: float) -> np.ndarray:
        self.check_images(images)
        mixed = (1.0 - alpha) * images.astype(np.float64) + alpha * self.pattern.astype(np.float64)[None]
        return truncate_to_uint8(mixed)

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        return self.blend(images, self.options.alpha)

    def poison_test_arrays(self, images, labels):
        self.check_images(images)
        keep = np.flatnonzero(labels != self.target)
        alpha = self.options.alpha if self.options.test_alpha is None else self.options.test_alpha
        return self.blend(images[keep], alpha), labels[keep].astype(np.int64), keep
