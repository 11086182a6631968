"""BadNets (Gu et al. 2017) as in BackdoorBench ``attack/badnet.py``.

BackdoorBench's trigger file is a 32×32 black image with a 3×3 pure-white square at rows/cols 29–31 (the
bottom-right corner, no margin); pasting keeps the original pixel wherever the trigger is 0. The patch side
scales with the image (3 px at 32, 2 at 16, 6 at 64). ``pattern: dataelixir`` gives DataElixir's public
variant instead: a 4×4 patch of 2×2 quadrants yellow / magenta / cyan / grey(122) at rows/cols 28–31.
A user trigger image (``trigger_path``, same paste rule: non-zero pixels replace the image) overrides both.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from detoxops.attacks.base import Attack, AttackOptions
from detoxops.attacks.registry import register
from detoxops.attacks.substitutes import load_image_file

_DATAELIXIR_QUADRANTS = np.array(
    [[[255, 255, 0], [255, 0, 255]], [[0, 255, 255], [122, 122, 122]]], dtype=np.uint8
)  # top-left yellow, top-right magenta, bottom-left cyan, bottom-right grey


class BadNetsOptions(AttackOptions):
    pattern: Literal["white", "dataelixir"] = "white"
    """``white``: BackdoorBench's 3×3 white square; ``dataelixir``: DataElixir's 4×4 coloured patch."""
    patch_size: int | None = Field(default=None, ge=1)
    """Patch side in pixels; ``None`` = 3 (white) or 4 (dataelixir) at 32 px, scaled to the image size."""
    margin: int = Field(default=0, ge=0)
    """Pixels between the patch and the bottom/right border (BackdoorBench: 0)."""
    color: tuple[int, int, int] = (255, 255, 255)
    """Colour of the ``white`` pattern (values 1..255; 0 would mean "keep the image" under the paste rule)."""
    trigger_path: str | None = None
    """An image file (PNG…) of the full image size used as the trigger: non-zero pixels are pasted."""


@register
class BadNets(Attack):
    name: ClassVar[str] = "badnets"
    Options: ClassVar[type[AttackOptions]] = BadNetsOptions
    options: BadNetsOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.trigger = self._build_trigger()

    def _build_trigger(self) -> np.ndarray:
        """The full-size (S, S, 3) uint8 trigger image; zeros mean "keep the original pixel"."""
        opts, s = self.options, self.image_size
        if opts.trigger_path is not None:
            trig = load_image_file(opts.trigger_path, s, resample="nearest")
            if not trig.any():
                raise ValueError(f"badnets trigger_path {opts.trigger_path}: the trigger image is all black")
            return trig
        if any(c < 1 or c > 255 for c in opts.color):
            raise ValueError(f"options.badnets.color must be in 1..255 per channel, got {opts.color}")
        default = 3 if opts.pattern == "white" else 4
        size = opts.patch_size or self.scale_px(default)
        if size + opts.margin > s:
            raise ValueError(f"badnets patch_size {size} + margin {opts.margin} exceeds the image size {s}")
        trig = np.zeros((s, s, 3), dtype=np.uint8)
        r0 = s - opts.margin - size
        if opts.pattern == "white":
            patch = np.broadcast_to(np.asarray(opts.color, dtype=np.uint8), (size, size, 3))
        else:
            # quadrant of every patch pixel: rows/cols in the first half → 0, second half → 1
            half = (np.arange(size) >= size / 2).astype(int)
            patch = _DATAELIXIR_QUADRANTS[half[:, None], half[None, :]]
        trig[r0 : r0 + size, r0 : r0 + size] = patch
        return trig

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        # BackdoorBench's AddMaskPatchTrigger: per pixel and channel, a trigger value > 0 replaces the image.
        return np.where(self.trigger[None] > 0, self.trigger[None], images)

    def trigger_mask(self, images: np.ndarray) -> np.ndarray:
        self.check_images(images)
        region = np.any(self.trigger > 0, axis=-1)
        return np.broadcast_to(region, images.shape[:3]).copy()
