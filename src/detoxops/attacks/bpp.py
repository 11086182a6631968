"""BppAttack (Wang et al. 2022) as in BackdoorBench ``attack/bpp.py`` — a training-loop attack.

Trigger: colour-depth reduction to ``squeeze_num`` = 8 levels per channel,
x_bd = round(round(255·x)/255·(q − 1))/(q − 1), i.e. on uint8 values u: level = round(u·(q − 1)/255) and the
stored value trunc(level·255/(q − 1)). No dithering by default (``dithering: true`` gives Floyd–Steinberg error
diffusion with the same quantiser). Nothing depends on pixel sizes, so nothing scales with the image size.

Training (per batch): the first int(0.1·B) = 12/128 are quantised and relabelled to the target, the next
int(B·neg_ratio) = 12/128 are *negative samples* that keep their label: x_neg = clamp(x + Q(x_r) − x_r), the
quantisation residual of another image x_r added to x. BackdoorBench draws x_r from the whole training set; in
:meth:`BPP.batch_transform` x_r is another image of the same (shuffled) batch, which is the same distribution
without holding a quantised copy of the training set. Then the batch-level PostTensorTransform as in WaNet.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from detoxops.attacks.base import AttackOptions, truncate_float_pipeline
from detoxops.attacks.loop import (
    LoopAttack,
    batch_counts,
    batch_donors,
    check_batch,
    maybe_post_transform,
    poison_head,
    snapshot_donors,
    snapshot_poison,
)
from detoxops.attacks.registry import register


class BPPOptions(AttackOptions):
    squeeze_num: int = Field(default=8, ge=2, le=256)
    """Levels per channel."""
    dithering: bool = False
    neg_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """Negative samples per batch, as a fraction of the batch."""
    batch_size: int = Field(default=128, ge=1)
    """Block length of the saved training snapshot (the BackdoorBench batch size)."""
    post_transform: bool = True
    random_crop: int = Field(default=5, ge=0)
    random_rotation: float = Field(default=10.0, ge=0.0)


def quantize01(x: torch.Tensor, levels: int) -> torch.Tensor:
    """BackdoorBench's squeeze on [0, 1] tensors: round(round(255x)/255·(q−1))/(q−1)."""
    return torch.round(torch.round(x * 255) / 255 * (levels - 1)) / (levels - 1)


def floyd_steinberg01(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Floyd–Steinberg error diffusion with the same quantiser, vectorised over batch and channels.

    Error diffusion is sequential by nature; the loop runs over the S×S pixel positions only.
    """
    x = (x * 255).round().to(torch.float64).clone()
    n, c, h, w = x.shape
    for i in range(h):
        for j in range(w):
            old = x[:, :, i, j].clone()
            new = torch.round(old / 255 * (levels - 1)) / (levels - 1) * 255
            x[:, :, i, j] = new
            err = old - new
            if j + 1 < w:
                x[:, :, i, j + 1] += err * 7 / 16
            if i + 1 < h:
                if j > 0:
                    x[:, :, i + 1, j - 1] += err * 3 / 16
                x[:, :, i + 1, j] += err * 5 / 16
                if j + 1 < w:
                    x[:, :, i + 1, j + 1] += err * 1 / 16
    return (x / 255).clamp(0, 1)


@register
class BPP(LoopAttack):
    name: ClassVar[str] = "bpp"
    Options: ClassVar[type[AttackOptions]] = BPPOptions
    options: BPPOptions

    def squeeze01(self, x: torch.Tensor) -> torch.Tensor:
        q = self.options.squeeze_num
        return floyd_steinberg01(x, q).to(x.dtype) if self.options.dithering else quantize01(x, q)

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        q = self.options.squeeze_num
        if self.options.dithering:
            x = torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2) / 255
            return truncate_float_pipeline(self.squeeze01(x).permute(0, 2, 3, 1).numpy() * 255)
        level = np.rint(images.astype(np.float64) * (q - 1) / 255)  # no ties: 2·u·(q−1) is never an odd ·255
        return truncate_float_pipeline(level * 255 / (q - 1))

    def negative_samples(self, images: np.ndarray, residual_from: np.ndarray) -> np.ndarray:
        """clip(x + Q(x_r) − x_r) with x_r = ``residual_from`` (uint8, same shape): the stored negatives."""
        self.check_images(images)
        residual = self.apply_trigger(residual_from).astype(np.int64) - residual_from.astype(np.int64)
        return np.clip(images.astype(np.int64) + residual, 0, 255).astype(np.uint8)

    # -------------------------------------------------------------- snapshot
    def cross_count(self, _num_bd: int, length: int) -> int:
        """Negative samples of a batch / snapshot block of ``length``: int(length · neg_ratio)."""
        return int(length * self.options.neg_ratio)

    def poison_train_arrays(self, images, labels):
        self.check_images(images)
        bd, neg = self.snapshot_indices(len(labels))
        out_images, out_labels, flags = snapshot_poison(images, labels, bd, self.apply_trigger, self.target)
        if len(neg):
            donors = snapshot_donors(neg, len(labels), self.seed + 1)  # a random *other* training image
            out_images[neg] = self.negative_samples(images[neg], images[donors])
        return out_images, out_labels, flags

    # -------------------------------------------------------------- training loop
    def batch_transform(self, x, y, generator=None):
        """First num_bd quantised → target, next int(B·neg_ratio) negatives (true label), then augmentation."""
        check_batch(x, y, self.image_size, self.name)
        b = x.shape[0]
        nb, n_neg = batch_counts(b, self.poison_ratio, generator, self.cross_count)
        clean = x
        x, y = poison_head(x, y, nb, self.target, self.squeeze01)
        if n_neg and b > 1:
            donors = batch_donors(nb, n_neg, b, generator, x.device)  # another batch position, never itself
            src = clean[donors]
            x[nb : nb + n_neg] = (x[nb : nb + n_neg] + self.squeeze01(src) - src).clamp(0, 1)
        return maybe_post_transform(x, generator, self.options), y
