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

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from detoxops.attacks.base import Attack, AttackOptions, truncate_float_pipeline
from detoxops.attacks.loop import check_batch, gen_device, post_tensor_transform, snapshot_indices, uniform
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
class BPP(Attack):
    name: ClassVar[str] = "bpp"
    kind: ClassVar[Literal["data", "loop"]] = "loop"
    replaces_augmentation: ClassVar[bool] = True
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
    def snapshot_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(quantised, negative) indices of the saved training set (see :mod:`detoxops.attacks.loop`)."""
        neg = self.options.neg_ratio
        return snapshot_indices(n, self.options.batch_size, self.poison_ratio, lambda _nb, ln: int(ln * neg),
                                self.seed)

    def poison_indices(self, labels: np.ndarray) -> np.ndarray:
        return self.snapshot_indices(len(labels))[0]

    def poison_train_arrays(self, images, labels):
        self.check_images(images)
        bd, neg = self.snapshot_indices(len(labels))
        out_images, out_labels = images.copy(), labels.astype(np.int64, copy=True)
        flags = np.zeros(len(labels), dtype=bool)
        if len(bd):
            out_images[bd] = self.apply_trigger(images[bd])
            out_labels[bd] = self.target
            flags[bd] = True
        if len(neg):
            rng = np.random.default_rng(self.seed + 1)
            # a random *other* training image for every negative sample
            donors = (neg + rng.integers(1, len(labels), size=len(neg))) % len(labels)
            out_images[neg] = self.negative_samples(images[neg], images[donors])
        return out_images, out_labels, flags

    # -------------------------------------------------------------- training loop
    def batch_transform(self, x, y, generator=None):
        """First num_bd quantised → target, next int(B·neg_ratio) negatives (true label), then augmentation."""
        check_batch(x, y, self.image_size, self.name)
        b = x.shape[0]
        expected = self.poison_ratio * b
        nb = int(expected) if expected >= 1 else int(uniform(generator, 0, 1) < expected)
        n_neg = min(int(b * self.options.neg_ratio), b - nb)
        clean = x
        x, y = x.clone(), y.clone()
        if nb:
            x[:nb] = self.squeeze01(x[:nb])
            y[:nb] = self.target
        if n_neg and b > 1:
            # donor of position i: another batch position (shift by 1..b-1, so never itself)
            shift = torch.randint(1, b, (n_neg,), generator=generator, device=gen_device(generator)).to(x.device)
            donors = (torch.arange(nb, nb + n_neg, device=x.device) + shift) % b
            src = clean[donors]
            x[nb : nb + n_neg] = (x[nb : nb + n_neg] + self.squeeze01(src) - src).clamp(0, 1)
        if self.options.post_transform:
            x = post_tensor_transform(x, generator, crop_pad=self.options.random_crop,
                                      rotation_deg=self.options.random_rotation)
        return x, y
