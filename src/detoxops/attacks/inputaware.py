"""Input-Aware Dynamic attack (IAD; Nguyen & Tran 2020) as in BackdoorBench ``attack/inputaware.py`` — a
training-loop attack whose trigger is made by two generators trained with the platform's own code.

Networks (spec §2.8), sizes scaled to the image: encoder–decoder CNNs of 3×3 conv + BN (momentum 0.05) + ReLU
blocks; per level two convs and a max-pool on the way down (channels ``width``·2^i; BackdoorBench 32/64/128 at
three levels), a middle conv, then per level bilinear ×2 upsampling and two convs back up, the last one to C_out
without ReLU; output tanh(·)/(2 + 1e-7) + 0.5 ∈ [0, 1]. ``levels`` = None gives log2(S) − 2 levels (3 at 32 px,
2 at 16 px: a 4×4 bottleneck). The pattern generator G has C_out = 3, the mask generator M C_out = 1, and the mask
is binarised m(x) = tanh(20·M(x) − 10)/(2 + 1e-7) + 0.5.

Trigger: x_bd = x + (G(x) − x)·m(x) (BackdoorBench computes this in normalised space; normalisation is a per-channel
affine map, so it is the same image in [0, 1]). A *cross* sample takes the pattern and mask of another image x₂,
x + (G(x₂) − x)·m(x₂), and keeps its true label.

:meth:`InputAware.fit` is the attacker's training (BackdoorBench trains G jointly with the victim; here the joint
stage trains an attacker-side classifier, then the victim is trained through :meth:`batch_transform` with G and M
fixed):

1. **mask pre-training** (``mask_steps``; BackdoorBench 25 epochs): M alone, Adam (0.01, β (0.5, 0.9)), lr ×0.1 at
   40 % and 80 % of the steps (BackdoorBench: epochs 10, 20), loss λ_norm·mean(ReLU(m(x₁) − density)) +
   λ_div·mean(‖x₁ − x₂‖_rms / (‖m(x₁) − m(x₂)‖_rms + 1e-7)) over two independently drawn batches;
2. **joint training** (``steps``; BackdoorBench 100 epochs): M frozen; per batch the first int(ratio·B) images are
   backdoored (label → target), the next int(num_bd·cross_ratio) are cross samples (donor = the second batch), the
   rest clean; loss CE(C(batch)) + λ_div·diversity(G); C: SGD 0.01 / momentum 0.9 / wd 5e-4, G: Adam 0.01
   (0.5, 0.9), both constant (BackdoorBench's milestones lie beyond its epochs). Batches get BackdoorBench's
   per-sample crop + flip before poisoning. BackdoorBench never zeroes G's gradients (spec §6.10);
   ``accumulate_generator_grads: true`` reproduces that, the default zeroes them.

The classifier of the joint stage is ``fit(..., model=...)`` trained in place (float [0, 1] NCHW → logits), or a
fresh ``classifier_arch`` (default small_cnn, width 16). Only G and M are kept (safetensors).

Victim training (:meth:`batch_transform`, BackdoorBench's per-batch rule, see :mod:`detoxops.attacks.loop`):
per-sample crop + flip (``augment``, BackdoorBench's train transform, so ``replaces_augmentation``), then the first
num_bd of the batch get their own trigger and the target label, the next num_cross a trigger made for another image
of the batch and their true label. Test images and the saved snapshot: uint8 by truncation; the steep mask is never
exactly zero, so changes below 1e-3 grey levels are dropped (else truncation would lower unmasked pixels one level,
the §1.4 round-off artefact that is not reproduced).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from detoxops.attacks.base import AttackOptions, truncate_float_pipeline
from detoxops.attacks.generators import (
    GeneratorAttack,
    GeneratorOptions,
    attacker_scores,
    network_depth,
    recent_mean,
    to01,
)
from detoxops.attacks.loop import (
    batch_counts,
    batch_donors,
    bd_count,
    check_batch,
    poison_head,
    snapshot_donors,
    snapshot_poison,
)
from detoxops.attacks.registry import register

WEIGHTS_FILE = "inputaware_generators.safetensors"
EPSILON = 1e-7
MIN_CHANGE = 1e-3
"""Grey levels: smaller changes (the never-exactly-zero mask outside its support) are dropped before truncation."""


class InputAwareOptions(GeneratorOptions):
    width: int = Field(default=16, ge=2)
    """Channels of the first generator level (then ×2 per level); BackdoorBench 32."""
    levels: int | None = Field(default=None, ge=1)
    """Down/up levels of G and M; ``None`` = log2(S) − 2 (3 at 32 px, as BackdoorBench)."""
    mask_density: float = Field(default=0.032, gt=0.0, lt=1.0)
    lambda_div: float = Field(default=1.0, ge=0.0)
    lambda_norm: float = Field(default=100.0, ge=0.0)
    cross_ratio: float = Field(default=1.0, ge=0.0)
    """Cross samples per backdoored sample (BackdoorBench: num_cross = num_bd)."""
    batch_size: int = Field(default=128, ge=2)
    """Batch of the attacker's training and block length of the saved snapshot."""
    mask_steps: int = Field(default=300, ge=0)
    """Mask pre-training steps (BackdoorBench: 25 epochs ≈ 9.8k steps on CIFAR-10)."""
    steps: int = Field(default=1000, ge=0)
    """Joint G + classifier steps (BackdoorBench: 100 epochs ≈ 39k steps)."""
    lr_generator: float = Field(default=0.01, gt=0.0)
    lr_mask: float = Field(default=0.01, gt=0.0)
    lr_classifier: float = Field(default=0.01, gt=0.0)
    accumulate_generator_grads: bool = False
    """True reproduces BackdoorBench's missing ``optimizerG.zero_grad()``."""
    augment: bool = True
    """Per-sample random crop (pad S/8) + flip before poisoning, in ``fit`` and ``batch_transform``."""


def _block(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class EncoderDecoder(nn.Module):
    """BackdoorBench's IAD generator, ``levels`` deep: output in [0, 1] with ``out_channels`` channels."""

    def __init__(self, out_channels: int, width: int, levels: int, in_channels: int = 3) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(levels)]
        layers: list[nn.Module] = []
        c = in_channels
        for ch in chans:
            layers += _block(c, ch) + _block(ch, ch) + [nn.MaxPool2d(2)]
            c = ch
        layers += _block(c, c)
        for i in reversed(range(levels)):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)] + _block(c, c)
            if i > 0:
                layers += _block(c, chans[i - 1])
                c = chans[i - 1]
            else:
                layers += _block(c, out_channels, relu=False)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x)) / (2 + EPSILON) + 0.5


def binarise_mask(m: torch.Tensor) -> torch.Tensor:
    """BackdoorBench's ``threshold``: tanh(20·M − 10)/(2 + 1e-7) + 0.5."""
    return torch.tanh(m * 20 - 10) / (2 + EPSILON) + 0.5


def _rms_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean(dim=(1, 2, 3)).sqrt()


def diversity_loss(x1: torch.Tensor, x2: torch.Tensor, out1: torch.Tensor, out2: torch.Tensor) -> torch.Tensor:
    """mean(‖x₁ − x₂‖_rms / (‖out₁ − out₂‖_rms + 1e-7)): small when different inputs give different outputs."""
    return (_rms_per_sample(x1, x2) / (_rms_per_sample(out1, out2) + EPSILON)).mean()


def crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """BackdoorBench's per-sample train transform (RandomCrop pad S/8 + flip), as the victim loop does it."""
    from detoxops.models.train import random_crop_flip

    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    return random_crop_flip(x, generator)


@register
class InputAware(GeneratorAttack):
    name: ClassVar[str] = "inputaware"
    networks: ClassVar[str] = "generators"
    weights_file: ClassVar[str] = WEIGHTS_FILE
    weights_label: ClassVar[str] = "Input-Aware"
    Options: ClassVar[type[AttackOptions]] = InputAwareOptions
    options: InputAwareOptions

    def build_networks(self) -> None:
        o = self.options
        self.levels = network_depth(self.image_size, o.levels, 4, "levels", "the generator networks")
        self.pattern_net = EncoderDecoder(3, o.width, self.levels).eval()
        self.mask_net = EncoderDecoder(1, o.width, self.levels).eval()

    # -------------------------------------------------------------- float [0, 1] tensors
    def masks01(self, x: torch.Tensor) -> torch.Tensor:
        """Binarised masks m(x), (B, 1, H, W) in [0, 1]."""
        return binarise_mask(self.mask_net(x))

    def poison01(self, x: torch.Tensor, donors: torch.Tensor | None = None) -> torch.Tensor:
        """x + (G(d) − x)·m(d) with d = ``donors`` (cross samples) or x itself (backdoored samples)."""
        d = x if donors is None else donors
        return x + (self.pattern_net(d) - x) * self.masks01(d)

    # -------------------------------------------------------------- fitting
    def train_networks(self, data: torch.Tensor, ys: torch.Tensor, clf: nn.Module, dev: torch.device,
                       progress: bool) -> dict[str, Any]:
        """Mask pre-training, then joint G + classifier training (see the module docstring)."""
        o = self.options
        gen = torch.Generator().manual_seed(self.seed)
        bs = min(o.batch_size, len(data))
        draw = lambda: torch.randint(0, len(data), (bs,), generator=gen)  # noqa: E731

        def batch(idx: torch.Tensor) -> torch.Tensor:
            x = data[idx]
            return (crop_flip(x, gen) if o.augment else x).to(dev)

        self.pattern_net.to(dev)
        self.mask_net.to(dev)
        mask_hist: list[tuple[float, float]] = []
        joint_hist: list[tuple[float, float]] = []
        try:
            # ---- phase 1: mask network alone
            self.mask_net.train()
            opt_m = torch.optim.Adam(self.mask_net.parameters(), lr=o.lr_mask, betas=(0.5, 0.9))
            milestones = [max(1, int(o.mask_steps * 0.4)), max(2, int(o.mask_steps * 0.8))]
            sched_m = torch.optim.lr_scheduler.MultiStepLR(opt_m, milestones, gamma=0.1)
            bar = tqdm(range(o.mask_steps), desc="inputaware: mask network", disable=not progress)
            for _ in bar:
                x1, x2 = batch(draw()), batch(draw())
                m1, m2 = self.masks01(x1), self.masks01(x2)
                loss_norm = F.relu(m1 - o.mask_density).mean()
                loss_div = diversity_loss(x1, x2, m1, m2)
                loss = o.lambda_norm * loss_norm + o.lambda_div * loss_div
                opt_m.zero_grad(set_to_none=True)
                loss.backward()
                opt_m.step()
                sched_m.step()
                mask_hist.append((float(loss_norm.detach()), float(loss_div.detach())))
            self.mask_net.eval()
            for p in self.mask_net.parameters():
                p.requires_grad_(False)

            # ---- phase 2: G and the classifier jointly, M frozen
            self.pattern_net.train()
            clf.train()
            opt_g = torch.optim.Adam(self.pattern_net.parameters(), lr=o.lr_generator, betas=(0.5, 0.9))
            opt_c = torch.optim.SGD(clf.parameters(), lr=o.lr_classifier, momentum=0.9, weight_decay=5e-4)
            rng = np.random.default_rng(self.seed + 1)
            bar = tqdm(range(o.steps), desc="inputaware: generator + classifier", disable=not progress)
            opt_g.zero_grad(set_to_none=True)
            for _ in bar:
                i1, i2 = draw(), draw()
                x1, x2 = batch(i1), batch(i2)
                y = ys[i1].to(dev)
                nb = bd_count(bs, self.poison_ratio, rng)
                nc = min(self.cross_count(nb, bs), bs - nb)
                parts, loss_div = [], torch.zeros((), device=dev)
                if nb:
                    pat1 = self.pattern_net(x1[:nb])
                    parts.append(x1[:nb] + (pat1 - x1[:nb]) * self.masks01(x1[:nb]))
                if nc:
                    donors = x2[nb : nb + nc]
                    pat2 = self.pattern_net(donors)
                    parts.append(x1[nb : nb + nc] + (pat2 - x1[nb : nb + nc]) * self.masks01(donors))
                k = min(nb, nc)
                if k:
                    loss_div = diversity_loss(x1[:k], x2[nb : nb + k], pat1[:k], pat2[:k])
                parts.append(x1[nb + nc :])
                y = y.clone()
                y[:nb] = self.target
                loss_ce = F.cross_entropy(clf(torch.cat(parts)), y)
                loss = loss_ce + o.lambda_div * loss_div
                opt_c.zero_grad(set_to_none=True)
                if not o.accumulate_generator_grads:
                    opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                opt_g.step()
                joint_hist.append((float(loss_ce.detach()), float(loss_div.detach())))
                if len(joint_hist) % 20 == 0:
                    bar.set_postfix(ce=f"{joint_hist[-1][0]:.3f}", div=f"{joint_hist[-1][1]:.3f}")
            self.pattern_net.eval()
            self.mask_net.cpu()
            self.pattern_net.cpu()
            self._fitted = True
            report = self._evaluate(clf, data, ys, dev)
        finally:
            for p in self.mask_net.parameters():
                p.requires_grad_(True)
            self.mask_net.eval()
            self.pattern_net.eval()
            self.mask_net.cpu()
            self.pattern_net.cpu()
        return {"mask_steps": o.mask_steps, "steps": o.steps,
                "mask_norm_loss": recent_mean(mask_hist, 0), "mask_div_loss": recent_mean(mask_hist, 1),
                "ce_loss": recent_mean(joint_hist, 0), "div_loss": recent_mean(joint_hist, 1), **report}

    @torch.no_grad()
    def _evaluate(self, clf: nn.Module, data: torch.Tensor, ys: torch.Tensor, dev: torch.device) -> dict[str, float]:
        """Mask statistics and the attacker classifier's accuracy / ASR on (up to 512 of) the fit images."""
        clf.eval()
        x, y = data[:512], ys[:512]
        m = self.masks01(x)
        return {"mask_mean": float(m.mean()), "mask_fraction": float((m > 0.5).float().mean()),
                **attacker_scores(clf, x, self.poison01(x), y, self.target, dev)}

    # -------------------------------------------------------------- state
    def state_modules(self) -> dict[str, nn.Module]:
        return {"pattern": self.pattern_net, "mask": self.mask_net}

    def state_metadata(self) -> dict[str, str]:
        return {"width": str(self.options.width), "levels": str(self.levels), "size": str(self.image_size)}

    # -------------------------------------------------------------- uint8 images
    @torch.no_grad()
    def _poison_u8(self, images: np.ndarray, donors: np.ndarray | None, batch_size: int = 256) -> np.ndarray:
        out = np.empty_like(images)
        for i in range(0, len(images), batch_size):
            sl = slice(i, i + batch_size)
            x = to01(images[sl])
            d = x if donors is None else to01(donors[sl])
            delta = ((self.pattern_net(d) - x) * self.masks01(d)).double() * 255
            delta = torch.where(delta.abs() < MIN_CHANGE, torch.zeros_like(delta), delta)
            res = torch.from_numpy(images[sl].astype(np.float64)).permute(0, 3, 1, 2) + delta
            out[sl] = truncate_float_pipeline(res.permute(0, 2, 3, 1).numpy())
        return out

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Every image with its own generated pattern inside its own mask."""
        self.check_images(images)
        self._require_fitted()
        return self._poison_u8(images, None)

    def apply_cross(self, images: np.ndarray, donors: np.ndarray) -> np.ndarray:
        """Cross samples: ``images`` with the pattern and mask generated for ``donors`` (same shape)."""
        self.check_images(images)
        self.check_images(donors)
        if donors.shape != images.shape:
            raise ValueError(f"donors must have the shape of images {images.shape}, got {donors.shape}")
        self._require_fitted()
        return self._poison_u8(images, donors)

    @torch.no_grad()
    def trigger_mask(self, images: np.ndarray) -> np.ndarray:
        """The binarised mask m(x) > 0.5 of every image, (N, H, W)."""
        self.check_images(images)
        self._require_fitted()
        return torch.cat([self.masks01(to01(images[i : i + 256]))[:, 0] > 0.5
                          for i in range(0, len(images), 256)]).numpy()

    # -------------------------------------------------------------- snapshot
    def cross_count(self, num_bd: int, _length: int) -> int:
        """Cross samples of a batch / snapshot block with ``num_bd`` backdoored: int(num_bd · cross_ratio)."""
        return int(num_bd * self.options.cross_ratio)

    def poison_train_arrays(self, images, labels):
        self.check_images(images)
        self._require_fitted()
        bd, cross = self.snapshot_indices(len(labels))
        out_images, out_labels, flags = snapshot_poison(images, labels, bd, self.apply_trigger, self.target)
        if len(cross) and len(labels) > 1:
            donors = snapshot_donors(cross, len(labels), self.seed + 1)  # never itself
            out_images[cross] = self.apply_cross(images[cross], images[donors])
        return out_images, out_labels, flags

    # -------------------------------------------------------------- training loop
    @torch.no_grad()
    def batch_transform(self, x, y, generator=None):
        """Crop + flip, then the first num_bd backdoored → target, the next num_cross cross samples (true label)."""
        check_batch(x, y, self.image_size, self.name)
        self._require_fitted()
        if self.options.augment:
            x = crop_flip(x, generator)
        b = x.shape[0]
        nb, nc = batch_counts(b, self.poison_ratio, generator, self.cross_count)
        dev = next(self.pattern_net.parameters()).device  # the generators stay where they are (CPU)
        clean = x
        x, y = poison_head(x, y, nb, self.target, lambda xb: self.poison01(xb.to(dev)).clamp(0, 1).to(xb))
        if nc and b > 1:
            donors = batch_donors(nb, nc, b, generator, x.device)
            x[nb : nb + nc] = self.poison01(clean[nb : nb + nc].to(dev), clean[donors].to(dev)).clamp(0, 1).to(x)
        return x, y
