"""FTrojan (Wang et al. 2022) as in BackdoorBench ``main`` (``utils/bd_img_transform/ftrojann.py``).

1. RGB uint8 → YCrCb uint8 (OpenCV's ``COLOR_RGB2YCrCb`` formulas, rounded and saturated);
2. orthonormal 2-D DCT-II of each channel in non-overlapping ``window``×``window`` blocks (default: one block,
   the whole image);
3. add ``magnitude`` to the coefficients at ``positions`` in the Cr and Cb channels (1, 2) of every block;
4. inverse DCT, cast to uint8 by truncation **without clipping** (out-of-range values wrap modulo 256, as the
   reference's ``astype(uint8)`` does), then YCrCb → RGB (rounded, saturated).

Defaults at 32 px: window 32, magnitude 30, positions (15, 15) and (31, 31). At other sizes the window follows the
image, positions keep their place relative to the window (mid and last frequency: (S/2 − 1, S/2 − 1),
(S − 1, S − 1)), and the magnitude is scaled by window/32 so that the pixel-domain amplitude (2·m/window per
coefficient) — and with it the PSNR — stays that of CIFAR-10.
OpenCV is not a dependency; its colour formulas are reproduced in float64 (values can differ from OpenCV's
fixed-point code by one grey level on a few pixels).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from scipy.fft import dctn, idctn

from detoxops.attacks.base import Attack, AttackOptions
from detoxops.attacks.registry import register


class FTrojanOptions(AttackOptions):
    window: int | None = Field(default=None, ge=2)
    """DCT block side; ``None`` = the image size (BackdoorBench: 32 = the whole CIFAR-10 image)."""
    magnitude: float | None = None
    """Added to each selected coefficient; ``None`` = 30 · window / 32."""
    positions: list[tuple[int, int]] | None = None
    """Coefficients (row, col) inside a block; ``None`` = (window/2 − 1, window/2 − 1), (window − 1, window − 1)."""
    channels: list[int] = Field(default_factory=lambda: [1, 2])
    """YCrCb channels to modify (0 = Y, 1 = Cr, 2 = Cb)."""
    yuv: bool = True
    """Work in YCrCb (BackdoorBench ``YUV: True``); False = directly on RGB."""


def rgb_to_ycrcb(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB → uint8 YCrCb with OpenCV's formulas (delta 128), rounded and saturated."""
    x = rgb.astype(np.float64)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    cr = (x[..., 0] - y) * 0.713 + 128.0
    cb = (x[..., 2] - y) * 0.564 + 128.0
    return np.clip(np.rint(np.stack([y, cr, cb], axis=-1)), 0, 255).astype(np.uint8)


def ycrcb_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """uint8 YCrCb → uint8 RGB with OpenCV's formulas, rounded and saturated."""
    x = ycc.astype(np.float64)
    y, cr, cb = x[..., 0], x[..., 1] - 128.0, x[..., 2] - 128.0
    r = y + 1.403 * cr
    g = y - 0.714 * cr - 0.344 * cb
    b = y + 1.773 * cb
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def block_dct(channels: np.ndarray, window: int, inverse: bool = False) -> np.ndarray:
    """Orthonormal 2-D DCT-II (or its inverse) of every ``window`` block of (N, H, W, C) float arrays."""
    n, h, w, c = channels.shape
    blocks = channels.reshape(n, h // window, window, w // window, window, c)
    fn = idctn if inverse else dctn
    return fn(blocks, type=2, axes=(2, 4), norm="ortho").reshape(n, h, w, c)


@register
class FTrojan(Attack):
    name: ClassVar[str] = "ftrojan"
    Options: ClassVar[type[AttackOptions]] = FTrojanOptions
    options: FTrojanOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        o = self.options
        self.window = o.window or self.image_size
        if self.window > self.image_size:
            raise ValueError(f"options.ftrojan.window {self.window} exceeds the image size {self.image_size}")
        self.magnitude = o.magnitude if o.magnitude is not None else 30.0 * self.window / 32.0
        self.positions = o.positions or [(self.window // 2 - 1,) * 2, (self.window - 1,) * 2]
        for r, c in self.positions:
            if not (0 <= r < self.window and 0 <= c < self.window):
                raise ValueError(f"options.ftrojan.positions: ({r}, {c}) is outside a {self.window} block")
        if any(ch not in (0, 1, 2) for ch in o.channels):
            raise ValueError(f"options.ftrojan.channels must be among 0, 1, 2, got {o.channels}")

    def coefficient_delta(self) -> np.ndarray:
        """The (window, window, 3) change added to every block's DCT coefficients."""
        delta = np.zeros((self.window, self.window, 3), dtype=np.float64)
        for r, c in self.positions:
            delta[r, c, self.options.channels] += self.magnitude
        return delta

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        ws, s = self.window, self.image_size
        full = s - s % ws  # only whole blocks are modified; a remainder strip (if any) stays as it is
        space = rgb_to_ycrcb(images) if self.options.yuv else images
        out = space.copy()
        region = space[:, :full, :full].astype(np.float64)
        coeffs = block_dct(region, ws)
        tiled = np.tile(self.coefficient_delta(), (full // ws, full // ws, 1))
        spatial = block_dct(coeffs + tiled[None], ws, inverse=True)
        # The reference casts with astype(uint8) and no clip: truncate toward zero, then wrap modulo 256.
        out[:, :full, :full] = np.mod(np.trunc(spatial).astype(np.int64), 256).astype(np.uint8)
        return ycrcb_to_rgb(out) if self.options.yuv else out
