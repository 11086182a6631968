"""ZIP (Shi et al., NeurIPS 2023, "Black-box Backdoor Defense via Zero-shot Image Purification") on detoxops's
diffusion engine.

Read next to the paper (arXiv 2303.12175: its abstract and figure 1 name the two stages below; its section and
equation numbers could not be read through our search tool, so the steps are cited from the public code,
github.com/sycny/ZIP ``preprocess/guided_diffusion/diffusion.py::simplified_purify``, which this module follows):

    Stage 1 ("apply a linear transformation (e.g., blurring) to destroy the backdoor pattern"):
        y_k = A_k x  for each linear degradation A_k; the code uses two, averaged below:
        A_gray (channel mean, pseudo-inverse = replicate) and A_pool (s x s average pooling, s = ``deg_scale``,
        pseudo-inverse = nearest upsampling). P_k = A_k^+ A_k is an orthogonal projection (range space).
    Stage 2 ("a guided diffusion process ... using the transformed image to guide the generation"; the
    range-null-space guidance of DDNM, Wang et al. ICLR 2023, the code's ``svd_ddnm.py``), from pure noise x_T, at every step t -> t' of a ``steps``-step strided schedule:
        ε = ε_θ(x_t, t)
        x̂_t^k = √ᾱ_t A_k^+ y_k + (I - P_k) x_t + √(1-ᾱ_t) P_k ε      (range part from the degraded image, noised
                                                                     with the model's own ε; null part generated)
        x̂_t  = mean_k x̂_t^k
        x̂_t  = (1 - ᾱ_t^λ) x̂_t + ᾱ_t^λ x_t                          (λ = ``at_threshold``: guidance fades out as
                                                                     ᾱ_t -> 1, letting the model add the detail
                                                                     the degradation removed)
        x̂_0  = (x̂_t - √(1-ᾱ_t) ε) / √ᾱ_t
        x_t' = √ᾱ_t' x̂_0 + √(1-ᾱ_t'-σ²) ε + σ z,  σ = η √((1-ᾱ_t')/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_t')   (DDIM, η = 1 in the code)

The paper's hyperparameter "2" (SampDetox appendix A.2: "set its hyperparameter to 2") is the degradation
strength ``deg_scale`` (the code's ``--deg_scale`` default 2.); λ = 10 and 20 steps are the code's defaults.
Where we differ: levels follow detoxops's convention (``step_levels(T, "ddim", T // steps)``: 1000, 950, …, 50,
then 0; the code visits diffusers timesteps 950, …, 0, i.e. levels 951, …, 1) and the purifier is the project's
(SampDetox A.2 also gave ZIP "the same diffusion models as ours"). ZIP never queries the classifier.

Vectorised over the batch; ``batch_size`` images at a time (the purifier chunks its passes further on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detoxops.config import ZipConfig
from detoxops.defenses.base import DefenseOutput, check_batch, make_generator

__all__ = ["Zip", "ZipOutput", "degrade", "project", "pseudo_inverse", "guided_step"]


@dataclass
class ZipOutput(DefenseOutput):
    """``images`` in [0, 1]; ``degraded`` the mean of the A_k^+ y_k (what guided the restoration), in [0, 1]."""

    degraded: Tensor | None = None


# ------------------------------------------------------------------------------------------- stage 1
def degrade(x: Tensor, kind: str, scale: int = 2) -> Tensor:
    """y = A x: ``gray`` (B, 1, H, W) channel mean; ``pool`` (B, C, H/s, W/s) s x s average pooling."""
    if kind == "gray":
        return x.mean(dim=1, keepdim=True)
    if kind == "pool":
        h, w = x.shape[-2:]
        if h % scale or w % scale:
            raise ValueError(f"zip: image side {h}x{w} is not a multiple of deg_scale {scale}")
        return torch.nn.functional.avg_pool2d(x, scale)
    raise ValueError(f"zip: unknown transform {kind!r}; use 'gray' or 'pool'")


def pseudo_inverse(y: Tensor, kind: str, channels: int = 3, scale: int = 2) -> Tensor:
    """A^+ y: the least-norm image that degrades to ``y`` (replicate the gray value; repeat each pooled pixel)."""
    if kind == "gray":
        return y.expand(-1, channels, -1, -1).contiguous()
    if kind == "pool":
        return y.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    raise ValueError(f"zip: unknown transform {kind!r}; use 'gray' or 'pool'")


def project(x: Tensor, kind: str, scale: int = 2) -> Tensor:
    """P x = A^+ A x, the range-space component of ``x`` (an orthogonal projection: P P = P)."""
    return pseudo_inverse(degrade(x, kind, scale), kind, x.shape[1], scale)


def guided_step(
    x_t: Tensor,
    eps: Tensor,
    abar_t: Tensor,
    abar_next: Tensor,
    guides: list[tuple[str, Tensor]],
    cfg: ZipConfig,
    noise: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One guided step (module docstring, stage 2): returns (x_t', x̂_0). ``guides`` = [(kind, A^+ y)]."""
    sa, s1a = abar_t.sqrt(), (1 - abar_t).sqrt()
    parts = [sa * apy + x_t - project(x_t, kind, cfg.deg_scale) + s1a * project(eps, kind, cfg.deg_scale)
             for kind, apy in guides]
    x_hat = torch.stack(parts).mean(0)
    fade = abar_t ** cfg.at_threshold
    x_hat = (1 - fade) * x_hat + fade * x_t
    x0 = (x_hat - s1a * eps) / sa
    sigma = cfg.eta * ((1 - abar_next) / (1 - abar_t)).sqrt() * (1 - abar_t / abar_next).clamp_min(0).sqrt()
    x_next = abar_next.sqrt() * x0 + (1 - abar_next - sigma**2).clamp_min(0).sqrt() * eps
    if noise is not None:
        x_next = x_next + sigma * noise
    return x_next, x0


class Zip:
    """``Zip(purifier, cfg, batch_size, seed)(x01) -> ZipOutput``; ``purifier`` a :class:`detoxops.diffusion.Purifier`
    (anything with ``.schedule`` and ``(x_t, levels) -> ε``)."""

    name = "zip"

    def __init__(self, purifier, cfg: ZipConfig | None = None, batch_size: int = 64, seed: int = 0) -> None:
        self.purifier = purifier
        self.schedule = purifier.schedule
        self.cfg = cfg or ZipConfig()
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        top = self.cfg.start_level or self.schedule.T
        if top > self.schedule.T:
            raise ValueError(f"baselines.zip.start_level = {top} exceeds the schedule's {self.schedule.T} steps")
        if self.cfg.steps > top:
            raise ValueError(f"baselines.zip.steps = {self.cfg.steps} exceeds the start level {top}")
        self.top = top

    def levels(self) -> list[int]:
        """Visited levels: top, top - stride, …, then 0 (``step_levels`` with stride top // steps)."""
        from detoxops.diffusion import step_levels

        return step_levels(self.top, "ddim", max(1, self.top // self.cfg.steps)) + [0]

    def __call__(self, x01: Tensor, generator: torch.Generator | None = None) -> ZipOutput:
        check_batch(x01)
        device, dtype = _placement(self.purifier)
        g = generator if generator is not None else make_generator(self.seed, device)
        outs = [self._purify(chunk.to(device, dtype), g) for chunk in x01.split(self.batch_size)]
        return ZipOutput(images=torch.cat([o.images for o in outs]), degraded=torch.cat([o.degraded for o in outs]))

    @torch.no_grad()
    def _purify(self, x01: Tensor, g: torch.Generator) -> ZipOutput:
        c = self.cfg
        x = x01 * 2 - 1
        guides = [(k, pseudo_inverse(degrade(x, k, c.deg_scale), k, x.shape[1], c.deg_scale)) for k in c.transforms]
        x_t = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        visited = self.levels()
        abar = self.schedule.abar
        for t, t_next in zip(visited[:-1], visited[1:], strict=True):
            levels = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            eps = self.purifier(x_t, levels).to(x.dtype)
            noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) if t_next > 0 else None
            a_t = abar[t].to(device=x.device, dtype=x.dtype)
            a_n = abar[t_next].to(device=x.device, dtype=x.dtype)
            x_t, _ = guided_step(x_t, eps, a_t, a_n, guides, c, noise)
        degraded = torch.stack([apy for _, apy in guides]).mean(0)
        return ZipOutput(images=_to01(x_t), degraded=_to01(degraded))


def _placement(purifier) -> tuple[torch.device, torch.dtype]:
    device = getattr(purifier, "device", torch.device("cpu"))
    dtype = getattr(purifier, "dtype", torch.float32)
    return torch.device(device), dtype


def _to01(x: Tensor) -> Tensor:
    return ((x + 1) / 2).clamp(0.0, 1.0).to(torch.float32)
