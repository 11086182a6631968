"""Sample-transformation baselines of SampDetox's table 8 (after Li et al., "Rethinking the trigger of backdoor
attack", 2021), behind the defense interface. No diffusion model; each is one batched tensor op.

* ``Noising(std)``      -- additive Gaussian noise in [0, 1] units, clipped.
* ``ShrinkPad(pad)``    -- resize to (H - pad, W - pad) (bilinear), then zero-pad back to (H, W) at a random
                           offset per image (BackdoorBox's default: 32x32 shrunk by 4).
* ``Blur(kernel, sigma)`` -- Gaussian blur (reflect borders).

The table's exact strengths are not stated in the paper; the defaults here are documented in
docs/sampdetox.md and are the values the results tables use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from detoxops.defenses.base import DefenseOutput, check_batch, make_generator

__all__ = ["Noising", "ShrinkPad", "Blur"]


class Noising:
    def __init__(self, std: float = 0.1, seed: int = 0) -> None:
        if not std >= 0:
            raise ValueError(f"Noising: std must be >= 0, got {std}")
        self.std, self.seed = float(std), int(seed)
        self.name = f"noising[std={self.std:g}]"

    def __call__(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> DefenseOutput:
        check_batch(x01)
        g = generator if generator is not None else make_generator(self.seed, x01.device)
        noise = torch.randn(x01.shape, generator=g, device=x01.device, dtype=x01.dtype)
        return DefenseOutput(images=(x01 + self.std * noise).clamp(0.0, 1.0))


class ShrinkPad:
    def __init__(self, pad: int = 4, seed: int = 0) -> None:
        if pad < 1:
            raise ValueError(f"ShrinkPad: pad must be >= 1, got {pad}")
        self.pad, self.seed = int(pad), int(seed)
        self.name = f"shrinkpad[pad={self.pad}]"

    def __call__(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> DefenseOutput:
        check_batch(x01)
        b, c, h, w = x01.shape
        p = self.pad
        if p >= min(h, w):
            raise ValueError(f"ShrinkPad: pad {p} too large for {h}x{w} images")
        g = generator if generator is not None else make_generator(self.seed, x01.device)
        shrunk = F.interpolate(x01, size=(h - p, w - p), mode="bilinear", align_corners=False, antialias=True)
        padded = F.pad(shrunk, (p, p, p, p))  # (h + p, w + p): every placement of the shrunk image fits
        # the shrunk image lands at offset (dy, dx) in [0, p]; the crop of ``padded`` starts at p - offset
        dy = torch.randint(0, p + 1, (b,), generator=g, device=x01.device)
        dx = torch.randint(0, p + 1, (b,), generator=g, device=x01.device)
        rows = (p - dy)[:, None] + torch.arange(h, device=x01.device)  # (B, H)
        cols = (p - dx)[:, None] + torch.arange(w, device=x01.device)  # (B, W)
        out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + p))
        out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
        return DefenseOutput(images=out.clamp(0.0, 1.0))


class Blur:
    def __init__(self, kernel: int = 5, sigma: float = 1.0) -> None:
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"Blur: kernel must be a positive odd integer, got {kernel}")
        if not sigma > 0:
            raise ValueError(f"Blur: sigma must be positive, got {sigma}")
        self.kernel, self.sigma = int(kernel), float(sigma)
        self.name = f"blur[k={self.kernel},sigma={self.sigma:g}]"

    def __call__(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> DefenseOutput:
        check_batch(x01)
        return DefenseOutput(images=gaussian_blur(x01, [self.kernel, self.kernel], [self.sigma, self.sigma]))
