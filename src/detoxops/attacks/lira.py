"""LIRA (Doan et al. 2021) as in BackdoorBench ``attack/lira.py`` — a training-loop attack whose trigger is a
bounded, input-dependent perturbation made by an autoencoder trained with the platform's own code.

Generator (spec §2.12, sizes scaled to the image): ``layers`` Conv 4×4 / stride 2 / pad 1 layers with BN + ReLU
(channels ``width``·2^i: 3→16→32→64→128 at 32 px), down to 2×2, mirrored by ConvTranspose 4×4 / stride 2 layers,
BN + ReLU on all but the last, tanh output in [−1, 1]. ``layers`` = None gives log2(S) − 1 (4 at 32 px, 3 at 16).

Trigger: BackdoorBench computes x_bd = clip(x + ε·G(x)) in *normalised* space with ε = 0.01; in [0, 1] pixels that
is x + ε·σ_c·G(x) with σ = CIFAR-10's std (0.247, 0.243, 0.261), i.e. at most ε·σ_c·255 ≈ 0.67 grey levels, clipped
to [0, 1] (BackdoorBench clips to one hard-coded normalised range ≈ [0, 1]). Stored uint8 by truncation, so at the
default ε a pixel stays at k where the perturbation is ≥ 0 and drops to k − 1 where it is negative (spec §2.12):
|x_bd − x| ≤ ceil(ε·max σ·255) grey levels (:meth:`LIRA.linf_bound_u8`).

:meth:`LIRA.fit` is BackdoorBench's **stage 1** (joint bilevel training) at CPU scale, ``steps`` batches
(BackdoorBench: 50 epochs), each batch after the PostTensorTransform (crop pad 5 p 0.8, rotation ±10° p 0.5, flip
p 0.5, see :mod:`detoxops.attacks.loop`):

1. the generator copy G_tgt takes an Adam step (``lr_generator``; BackdoorBench 1e-4) on CE(C(x + ε·G_tgt(x)), t);
2. the classifier C takes an SGD step (0.01, momentum 0.9, no weight decay) on
   α·CE(C(x), y) + (1 − α)·CE(C(x + ε·G_atk(x)), t), α = 0.5;
3. every ``sync_every`` steps (BackdoorBench: every epoch; None = one pass over the fit images) G_atk ← G_tgt.

C is ``fit(..., model=...)`` trained in place (BackdoorBench's stage-1 ``clsmodel``) or a fresh
``classifier_arch``; only G_atk is kept (safetensors). **Stage 2** (C fine-tuned with G fixed) is the victim's
training through :meth:`batch_transform`: the platform trains the victim from scratch with the fixed generator
instead of fine-tuning the stage-1 classifier, and expresses BackdoorBench's every-sample α-loss as the loop
attacks' per-batch rule: after the PostTensorTransform, the first int(ratio·B) samples get the trigger and the
target label (ratio = ``poison_ratio``; α = 0.5 corresponds to every sample seen clean and poisoned once). With
``quantize`` (default) those samples are truncated to the uint8 grid exactly as the test images are; false trains on
BackdoorBench's float perturbation. BackdoorBench saves no poisoned training set; here the saved snapshot follows
the loop convention (first num_bd of every ``batch_size`` block triggered and relabelled, no cross samples).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from detoxops.attacks.base import FLOAT_GUARD, AttackOptions, truncate_float_pipeline
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
    check_batch,
    maybe_post_transform,
    poison_head,
    snapshot_poison,
)
from detoxops.attacks.registry import register

WEIGHTS_FILE = "lira_generator.safetensors"
CIFAR_STD = (0.247, 0.243, 0.261)
"""BackdoorBench's CIFAR-10 normalisation std: ε is in these units."""


class LIRAOptions(GeneratorOptions):
    eps: float = Field(default=0.01, gt=0.0)
    """Perturbation bound in normalised units (BackdoorBench ``eps`` = ``test_eps`` = 0.01 ≈ 0.67 grey levels)."""
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    """Clean-loss weight of the classifier step in ``fit``."""
    width: int = Field(default=16, ge=2)
    """Channels of the first encoder layer (then ×2 per layer); BackdoorBench 16."""
    layers: int | None = Field(default=None, ge=1)
    """Encoder / decoder depth; ``None`` = log2(S) − 1 (4 at 32 px, as BackdoorBench)."""
    steps: int = Field(default=1000, ge=0)
    """Joint stage batches (BackdoorBench: 50 epochs ≈ 19.5k batches on CIFAR-10)."""
    batch_size: int = Field(default=128, ge=2)
    """Batch of the joint stage and block length of the saved snapshot."""
    lr_generator: float = Field(default=1e-3, gt=0.0)
    """Adam lr of G (BackdoorBench 1e-4 over 50 epochs; 1e-3 at CPU scale, see docs/attacks.md)."""
    lr_classifier: float = Field(default=0.01, gt=0.0)
    sync_every: int | None = Field(default=None, ge=1)
    """Steps between G_atk ← G_tgt; ``None`` = one pass over the fit images (BackdoorBench: every epoch)."""
    quantize: bool = True
    """Truncate the backdoored samples of ``batch_transform`` to the uint8 grid, as the test images."""
    post_transform: bool = True
    """BackdoorBench's batch-level crop / rotation / flip in ``fit`` and ``batch_transform``."""
    random_crop: int = Field(default=5, ge=0)
    random_rotation: float = Field(default=10.0, ge=0.0)


class Autoencoder(nn.Module):
    """BackdoorBench's LIRA autoencoder, ``layers`` deep; output tanh ∈ [−1, 1]."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        chans = [3] + [width * 2**i for i in range(layers)]
        enc: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            enc += [nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        dec: list[nn.Module] = []
        rev = chans[::-1]
        for i, (cin, cout) in enumerate(zip(rev[:-1], rev[1:], strict=True)):
            dec.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
            dec += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)] if i < layers - 1 else [nn.Tanh()]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register
class LIRA(GeneratorAttack):
    name: ClassVar[str] = "lira"
    weights_file: ClassVar[str] = WEIGHTS_FILE
    weights_label: ClassVar[str] = "LIRA"
    Options: ClassVar[type[AttackOptions]] = LIRAOptions
    options: LIRAOptions

    def build_networks(self) -> None:
        self.layers = network_depth(self.image_size, self.options.layers, 2, "layers", "the LIRA autoencoder")
        self.generator_net = Autoencoder(self.options.width, self.layers).eval()

    def scale01(self, device=None) -> torch.Tensor:
        """ε·σ_c as a (1, 3, 1, 1) tensor: the per-channel bound of the perturbation on the [0, 1] scale."""
        return self.options.eps * torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)

    def linf_bound_u8(self) -> int:
        """Largest |triggered − clean| in grey levels after truncation: ceil(ε·max σ·255)."""
        return math.ceil(self.options.eps * max(CIFAR_STD) * 255)

    def perturb01(self, x: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        """clip(x + ε·σ·G(x), 0, 1) on float [0, 1] NCHW (differentiable)."""
        g = (net or self.generator_net)(x)
        return (x + self.scale01(x.device) * g).clamp(0, 1)

    # -------------------------------------------------------------- fitting
    def train_networks(self, data: torch.Tensor, ys: torch.Tensor, clf: nn.Module, dev: torch.device,
                       progress: bool) -> dict[str, Any]:
        """BackdoorBench's stage 1: joint generator / classifier training (see the module docstring)."""
        import copy

        o = self.options
        gen = torch.Generator().manual_seed(self.seed)
        bs = min(o.batch_size, len(data))
        sync = o.sync_every or max(1, len(data) // bs)
        g_atk = self.generator_net.to(dev)
        g_tgt = copy.deepcopy(g_atk)
        opt_g = torch.optim.Adam(g_tgt.parameters(), lr=o.lr_generator)
        opt_c = torch.optim.SGD(clf.parameters(), lr=o.lr_classifier, momentum=0.9)
        hist: list[tuple[float, float]] = []
        try:
            g_tgt.train()
            g_atk.eval()
            perm, pos = torch.randperm(len(data), generator=gen), 0
            bar = tqdm(range(o.steps), desc="lira: generator + classifier", disable=not progress)
            for step in bar:
                if pos + bs > len(data):
                    perm, pos = torch.randperm(len(data), generator=gen), 0
                idx = perm[pos : pos + bs]
                pos += bs
                x = maybe_post_transform(data[idx], gen, o).to(dev)
                y = ys[idx].to(dev)
                t = torch.full_like(y, self.target)
                # 1. attacker step on G_tgt against the current classifier
                clf.eval()
                loss_g = F.cross_entropy(clf(self.perturb01(x, g_tgt)), t)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                # 2. classifier step with the fixed G_atk
                clf.train()
                with torch.no_grad():
                    x_bd = self.perturb01(x, g_atk)
                loss_c = o.alpha * F.cross_entropy(clf(x), y) + (1 - o.alpha) * F.cross_entropy(clf(x_bd), t)
                opt_c.zero_grad(set_to_none=True)
                loss_c.backward()
                opt_c.step()
                # 3. G_atk <- G_tgt once per pass
                if (step + 1) % sync == 0:
                    g_atk.load_state_dict(g_tgt.state_dict())
                hist.append((float(loss_g.detach()), float(loss_c.detach())))
                if step % 20 == 0:
                    bar.set_postfix(loss_g=f"{hist[-1][0]:.3f}", loss_c=f"{hist[-1][1]:.3f}")
            g_atk.load_state_dict(g_tgt.state_dict())
            g_atk.eval()
            g_atk.cpu()
            self._fitted = True
            report = self._evaluate(clf, data, ys, dev)
        finally:
            self.generator_net.eval()
            self.generator_net.cpu()
        return {"steps": o.steps, "sync_every": sync,
                "generator_loss": recent_mean(hist, 0), "classifier_loss": recent_mean(hist, 1), **report}

    @torch.no_grad()
    def _evaluate(self, clf: nn.Module, data: torch.Tensor, ys: torch.Tensor, dev) -> dict[str, float]:
        """The attacker classifier's accuracy and ASR (uint8 triggers) on up to 512 of the fit images."""
        clf.eval()
        x, y = data[:512], ys[:512]
        u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return attacker_scores(clf, x, to01(self.apply_trigger(u8)), y, self.target, dev)

    # -------------------------------------------------------------- state
    def state_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator_net}

    def state_metadata(self) -> dict[str, str]:
        return {"width": str(self.options.width), "layers": str(self.layers), "size": str(self.image_size)}

    # -------------------------------------------------------------- uint8 images
    @torch.no_grad()
    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 256
                      ) -> np.ndarray:
        """clip(x + ε·σ·G(x)) truncated to uint8 (see the module docstring)."""
        self.check_images(images)
        self._require_fitted()
        out = np.empty_like(images)
        for i in range(0, len(images), batch_size):
            sl = slice(i, i + batch_size)
            g = self.generator_net(to01(images[sl])).double()
            res = torch.from_numpy(images[sl].astype(np.float64)).permute(0, 3, 1, 2)
            res = (res + self.scale01().double() * 255 * g).clamp(0, 255)
            out[sl] = truncate_float_pipeline(res.permute(0, 2, 3, 1).numpy())
        return out

    # -------------------------------------------------------------- snapshot
    def poison_train_arrays(self, images, labels):
        self.check_images(images)
        self._require_fitted()
        bd, _ = self.snapshot_indices(len(labels))
        return snapshot_poison(images, labels, bd, self.apply_trigger, self.target)

    # -------------------------------------------------------------- training loop
    def _trigger01(self, xb: torch.Tensor) -> torch.Tensor:
        """The backdoored version of float [0, 1] samples ``xb`` (uint8-quantised with ``quantize``)."""
        dev = next(self.generator_net.parameters()).device
        out = xb.to(dev)
        if self.options.quantize:  # exactly apply_trigger's arithmetic on the 0..255 scale, then back to [0, 1]
            g = self.generator_net(out).double()
            res = (out.double() * 255 + self.scale01(dev).double() * 255 * g).clamp(0, 255)
            out = torch.floor(res + FLOAT_GUARD).clamp(0, 255) / 255
        else:
            out = self.perturb01(out)
        return out.to(xb)

    @torch.no_grad()
    def batch_transform(self, x, y, generator=None):
        """PostTensorTransform, then the first num_bd samples get the trigger and the target label."""
        check_batch(x, y, self.image_size, self.name)
        self._require_fitted()
        x = maybe_post_transform(x, generator, self.options)
        nb, _ = batch_counts(x.shape[0], self.poison_ratio, generator)
        return poison_head(x, y, nb, self.target, self._trigger01)
