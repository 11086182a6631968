"""WaNet (Nguyen & Tran 2021) as in BackdoorBench ``attack/wanet.py`` — a training-loop attack.

Fixed warping field, drawn once from the attack seed: U ~ uniform[−1, 1] of shape 2×k×k, divided by mean |U|,
bicubically upsampled (align_corners) to S×S; warp grid = clamp((identity + s·U↑/S)·grid_rescale, −1, 1),
where the identity grid's channel 0 is the column (x) and channel 1 the row (y) coordinate, both linspace(−1, 1).
The backdoored image is ``grid_sample(x, grid, bilinear, align_corners=True)``. A point moves by s·U↑·(S−1)/(2S)
pixels, so at s = 0.5 and k = 4 by well under a pixel. The grid is in normalised coordinates, so k, s and the
rescale need no adjustment with the image size.

Noise ("cross") mode: grid + uniform[−1, 1]/S per pixel and sample, clamped; the sample keeps its true label.
Per training batch 12/128 are backdoored and 24/128 noise-warped (``cross_ratio`` 2), followed by the
batch-level PostTensorTransform (see :mod:`detoxops.attacks.loop`). float → uint8 by truncation.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from detoxops.attacks.base import AttackOptions, truncate_float_pipeline
from detoxops.attacks.loop import (
    LoopAttack,
    batch_counts,
    check_batch,
    gen_device,
    maybe_post_transform,
    poison_head,
    snapshot_poison,
)
from detoxops.attacks.registry import register


class WaNetOptions(AttackOptions):
    k: int = Field(default=4, ge=2)
    """Control-grid side of the random warp."""
    s: float = Field(default=0.5, ge=0.0)
    """Warp strength."""
    grid_rescale: float = Field(default=1.0, gt=0.0)
    cross_ratio: float = Field(default=2.0, ge=0.0)
    """Noise-mode samples per backdoored sample."""
    batch_size: int = Field(default=128, ge=1)
    """Block length of the saved training snapshot (the BackdoorBench batch size)."""
    post_transform: bool = True
    """Apply BackdoorBench's batch-level crop/rotation/flip in :meth:`WaNet.batch_transform`."""
    random_crop: int = Field(default=5, ge=0)
    random_rotation: float = Field(default=10.0, ge=0.0)


@register
class WaNet(LoopAttack):
    name: ClassVar[str] = "wanet"
    Options: ClassVar[type[AttackOptions]] = WaNetOptions
    options: WaNetOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.noise_grid, self.identity_grid = self._make_grids()

    @property
    def replaces_augmentation(self) -> bool:  # type: ignore[override]
        """With ``post_transform`` (BackdoorBench) the loop brings its own crop / rotation / flip; without it the
        victim's recipe augments as for any other data (e.g. airbench's flip + translate), instead of nothing."""
        return self.options.post_transform

    def _make_grids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(upsampled noise U↑, identity) as float64 (1, S, S, 2) tensors, x then y in the last axis."""
        k, size = self.options.k, self.image_size
        gen = torch.Generator().manual_seed(self.seed)
        ins = torch.rand(1, 2, k, k, generator=gen, dtype=torch.float64) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, size, dtype=torch.float64)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((cols, rows), dim=-1)[None]
        return noise, identity

    def warp_grid(self) -> torch.Tensor:
        """The fixed (1, S, S, 2) float64 sampling grid."""
        o = self.options
        grid = (self.identity_grid + o.s * self.noise_grid / self.image_size) * o.grid_rescale
        return grid.clamp(-1, 1)

    def displacement_px(self) -> torch.Tensor:
        """(S, S, 2) pixel displacement (x, y) of the warp grid (after its clamp to the image border)."""
        return (self.warp_grid()[0] - self.identity_grid[0]) * (self.image_size - 1) / 2

    def _noise_grids(self, count: int, generator: torch.Generator | None, dtype, device) -> torch.Tensor:
        base = self.warp_grid().to(dtype=dtype, device=device)
        ins = torch.rand(count, self.image_size, self.image_size, 2, generator=generator, dtype=dtype,
                         device=gen_device(generator)) * 2 - 1
        return (base + ins.to(device) / self.image_size).clamp(-1, 1)

    @staticmethod
    def _sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.to(dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    # -------------------------------------------------------------- uint8 images
    def _warp_u8(self, images: np.ndarray, grid: torch.Tensor) -> np.ndarray:
        x = torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2)  # 0..255: warping is linear
        out = self._sample(x, grid).permute(0, 2, 3, 1).numpy()
        return truncate_float_pipeline(out)

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        return self._warp_u8(images, self.warp_grid())

    def apply_noise_mode(self, images: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Noise-mode (cross) copies of ``images``: the warp plus per-pixel random jitter."""
        self.check_images(images)
        gen = torch.Generator().manual_seed(self.seed + 1 if seed is None else seed)
        return self._warp_u8(images, self._noise_grids(len(images), gen, torch.float64, "cpu"))

    # -------------------------------------------------------------- snapshot
    def cross_count(self, num_bd: int, _length: int) -> int:
        """Noise-mode samples of a batch / snapshot block with ``num_bd`` backdoored: int(num_bd · cross_ratio)."""
        return int(num_bd * self.options.cross_ratio)

    def poison_train_arrays(self, images, labels):
        self.check_images(images)
        bd, cross = self.snapshot_indices(len(labels))
        out_images, out_labels, flags = snapshot_poison(images, labels, bd, self.apply_trigger, self.target)
        if len(cross):
            out_images[cross] = self.apply_noise_mode(images[cross])
        return out_images, out_labels, flags

    # -------------------------------------------------------------- training loop
    def batch_transform(self, x, y, generator=None):
        """First num_bd of the batch warped → target, next num_bd·cross_ratio noise-warped, then augmentation."""
        check_batch(x, y, self.image_size, self.name)
        nb, nc = batch_counts(x.shape[0], self.poison_ratio, generator, self.cross_count)
        x, y = poison_head(x, y, nb, self.target, lambda xb: self._sample(xb, self.warp_grid()))
        if nc:
            grids = self._noise_grids(nc, generator, x.dtype, x.device)
            x[nb : nb + nc] = self._sample(x[nb : nb + nc], grids)
        return maybe_post_transform(x, generator, self.options), y
