"""BadNets with the patch at a random position in every image: an adaptive attack on patch localisers.

Not a BackdoorBench attack. SampDetox's localised restoration (docs/sampdetox.md) could, in principle, learn
*where* BadNets puts its patch (the bottom-right corner); this variant tests that it finds the patch by what the
patch is, not where. The patch is BadNets' (options as :class:`~detoxops.attacks.badnets.BadNetsOptions`: the
3×3 white square by default, ``color`` for a natural-colour one); its top-left corner is drawn uniformly over
every position where it fits, per image.

The position is a function of the clean image's content (a seeded integer hash of its pixels), not of a
running random stream, so the same clean image always gets the same position: ``trigger_mask`` of the clean
counterparts locates the patches ``apply_trigger`` pasted, and re-running an attack reproduces it bit for bit.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from detoxops.attacks.badnets import BadNets, BadNetsOptions
from detoxops.attacks.registry import register


class RandomBadNetsOptions(BadNetsOptions):
    pass


@register
class RandomPositionBadNets(BadNets):
    name: ClassVar[str] = "badnets_random"
    Options: ClassVar[type[BadNetsOptions]] = RandomBadNetsOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.options.trigger_path is not None:
            raise ValueError("badnets_random moves a square patch; a full-size trigger_path cannot be moved")
        region = np.any(self.trigger > 0, axis=-1)
        rows, cols = np.nonzero(region)
        self.patch = self.trigger[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # (p, p, 3)
        side = self.patch.shape[0]
        self.positions_per_axis = self.image_size - side + 1
        # one int64 weight per pixel value: the hash below mixes every pixel of an image
        s = self.image_size
        self._weights = np.random.default_rng(self.seed).integers(1, 2**31 - 1, size=s * s * 3, dtype=np.int64)

    def positions(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-left (row, col) of every image's patch, from its content (int64 arithmetic wraps harmlessly)."""
        self.check_images(images)
        flat = images.reshape(len(images), -1).astype(np.int64)
        code = (flat * self._weights).sum(axis=1)
        code = np.abs(code ^ (code >> 29)) % (self.positions_per_axis**2)
        return code // self.positions_per_axis, code % self.positions_per_axis

    def _patch_region(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) bool: every image's patch square."""
        top, left = self.positions(images)
        side = self.patch.shape[0]
        ar = np.arange(self.image_size)
        rows = (ar >= top[:, None]) & (ar < top[:, None] + side)
        cols = (ar >= left[:, None]) & (ar < left[:, None] + side)
        return rows[:, :, None] & cols[:, None, :]

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        region = self._patch_region(images)
        # the patch's own pixel at every position of its square: patch[(r - top) % p, (c - left) % p]
        top, left = self.positions(images)
        side = self.patch.shape[0]
        ar = np.arange(self.image_size)
        r_idx = (ar[None, :] - top[:, None]) % side
        c_idx = (ar[None, :] - left[:, None]) % side
        pasted = self.patch[r_idx[:, :, None], c_idx[:, None, :]]  # (N, S, S, 3)
        keep = region[..., None] & (pasted > 0)  # BadNets' paste rule: a zero trigger channel keeps the image
        return np.where(keep, pasted, images)

    def trigger_mask(self, images: np.ndarray) -> np.ndarray:
        return self._patch_region(images)
