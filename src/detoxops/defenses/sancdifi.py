"""Sancdifi (May et al., 2023, "Salient Conditional Diffusion for Defending Against Backdoor Attacks",
arXiv 2301.13862) on detoxops's diffusion engine.

The paper (abstract and §1): "a DDPM degrades an image with noise and then recovers it; saliency-based masks
condition the diffusion, allowing for stronger diffusion on the most salient pixels", computed without the
Trojan network's parameters (black box). SampDetox (appendix A.2) ran it with RISE maps from 2000 random binary
masks, saliency threshold 0.95, and SampDetox's own diffusion model; so do we. The steps:

    1. Saliency (RISE, Petsiuk et al. BMVC 2018: the saliency of a class is the mask average weighted by the
       model's score on each masked input), of the class the black box predicts for x:
           S(x) = 1 / (N p) · Σ_i f_c(x ⊙ M_i) · M_i ,   c = f(x)
       M_i: an s x s grid of cells kept with probability p, bilinearly upsampled to (s+1)·⌈H/s⌉ and cropped at
       a random shift (RISE's masks). The black box only returns labels, so f_c(·) = 1[label = c] (RISE's
       class score replaced by the hard-label indicator; the guard's contract gives labels, not scores).
    2. Salient mask: m = normalise(S) >= τ, τ = 0.95 (min-max normalisation per image).
    3. Salient conditional diffusion: per-pixel levels L = t_salient on m, t_rest elsewhere; noise every pixel
       to its level (x_L = √ᾱ_L x + √(1-ᾱ_L) z) and denoise with the engine's per-pixel rule (``denoise(t_map=L)``:
       a pixel is only updated below its own level), so salient pixels are restored from much more noise.

What we could not read here: the paper's own noise levels (its method section was not reachable through our
search tool). ``t_salient = 300`` and ``t_rest = 20`` are detoxops's choices (SampDetox's stage-1 level 20 for
the light global diffusion; 300 = a level at which the engine's restoration removes patch triggers, see
docs/sampdetox.md's ``t_mask``), named as such in params.yaml and docs/baselines.md.

Queries: N + 1 per image (the prediction c plus one per RISE mask), counted in ``SancdifiOutput.queries`` and
on the defense (``queries_total``). Vectorised: the batch x masks products are sent in chunks of at most
``query_batch`` images, so memory stays bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from detoxops.config import SancdifiConfig
from detoxops.defenses.base import BlackBox, DefenseOutput, check_batch, make_generator

__all__ = ["BlackBox", "Sancdifi", "SancdifiOutput", "rise_masks", "rise_saliency", "salient_mask"]


@dataclass
class SancdifiOutput(DefenseOutput):
    """``images`` in [0, 1]; ``saliency`` (B, 1, H, W) min-max normalised RISE map; ``salient`` bool mask;
    ``noise_levels`` int64 per-pixel levels; ``queries`` int64 (B,) classifier queries spent per image."""

    saliency: Tensor | None = None
    salient: Tensor | None = None
    noise_levels: Tensor | None = None
    queries: Tensor | None = None


def rise_masks(n: int, size: tuple[int, int], grid: int, keep_prob: float, generator: torch.Generator,
               device: torch.device | str = "cpu") -> Tensor:
    """RISE's random masks, float (n, H, W) in [0, 1]: coarse cells kept with ``keep_prob``, bilinearly
    upsampled to (grid + 1) · cell and cropped at a random shift in [0, cell)."""
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand((n, 1, grid, grid), generator=generator, device=device) < keep_prob).float()
    up = F.interpolate(cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = torch.randint(0, cell_h, (n,), generator=generator, device=device)
    dx = torch.randint(0, cell_w, (n,), generator=generator, device=device)
    rows = dy[:, None] + torch.arange(h, device=device)[None]
    cols = dx[:, None] + torch.arange(w, device=device)[None]
    idx = torch.arange(n, device=device)[:, None, None]
    return up[idx, rows[:, :, None], cols[:, None, :]]


def rise_saliency(x01: Tensor, classes: Tensor, masks: Tensor, keep_prob: float, black_box, query_batch: int) -> Tensor:
    """S = 1 / (N p) Σ_i 1[f(x ⊙ M_i) = c] M_i per image, float (B, 1, H, W) (RISE eq. 6, hard labels)."""
    b, n = len(x01), len(masks)
    sal = torch.zeros((b, *masks.shape[1:]), dtype=torch.float32, device=x01.device)
    per_call = max(1, query_batch // max(b, 1))
    for start in range(0, n, per_call):
        m = masks[start : start + per_call].to(x01.dtype)
        masked = (x01[:, None] * m[None, :, None]).flatten(0, 1)  # (B*K, C, H, W)
        hits = (black_box(masked).view(b, len(m)) == classes[:, None]).float()
        sal += torch.einsum("bk,khw->bhw", hits, m.float())
    return (sal / (n * keep_prob))[:, None]


def salient_mask(saliency: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(normalised saliency, mask): min-max per image, salient = normalised >= threshold. A flat map (every mask
    gave the same answer) has no salient pixel."""
    lo = saliency.amin(dim=(-2, -1), keepdim=True)
    hi = saliency.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    norm = torch.where(span > 0, (saliency - lo) / span.clamp_min(1e-12), torch.zeros_like(saliency))
    return norm, (norm >= threshold) & (span > 0)


class Sancdifi:
    """``Sancdifi(purifier, classifier, cfg, batch_size, seed)(x01) -> SancdifiOutput``."""

    name = "sancdifi"

    def __init__(self, purifier, classifier, cfg: SancdifiConfig | None = None, batch_size: int = 64,
                 seed: int = 0) -> None:
        self.purifier = purifier
        self.schedule = purifier.schedule
        self.cfg = cfg or SancdifiConfig()
        for key in ("t_salient", "t_rest"):
            if getattr(self.cfg, key) > self.schedule.T:
                raise ValueError(f"baselines.sancdifi.{key} = {getattr(self.cfg, key)} exceeds the schedule's "
                                 f"{self.schedule.T} steps")
        self.black_box = classifier if isinstance(classifier, BlackBox) else BlackBox(classifier, self.cfg.query_batch)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._masks: dict[tuple, Tensor] = {}

    @property
    def queries_total(self) -> int:
        return self.black_box.queries

    def masks(self, size: tuple[int, int], device: torch.device) -> Tensor:
        """The N RISE masks for this image size, drawn once from ``seed`` (the same for every image)."""
        key = (size, str(device))
        if key not in self._masks:
            c = self.cfg
            g = make_generator(self.seed + 7919, "cpu")
            self._masks[key] = rise_masks(c.n_masks, size, c.mask_grid, c.keep_prob, g).to(device)
        return self._masks[key]

    def __call__(self, x01: Tensor, generator: torch.Generator | None = None) -> SancdifiOutput:
        check_batch(x01)
        device = getattr(self.purifier, "device", torch.device("cpu"))
        dtype = getattr(self.purifier, "dtype", torch.float32)
        g = generator if generator is not None else make_generator(self.seed, device)
        outs = [self._defend(chunk.to(device, dtype), g) for chunk in x01.split(self.batch_size)]
        cat = {k: torch.cat([getattr(o, k) for o in outs]) for k in
               ("images", "saliency", "salient", "noise_levels", "queries")}
        maps = {"trigger_map": cat["saliency"], "noise_levels": cat["noise_levels"].float()}
        return SancdifiOutput(maps=maps, **cat)

    @torch.no_grad()
    def _defend(self, x01: Tensor, g: torch.Generator) -> SancdifiOutput:
        from detoxops.diffusion import denoise, snap_levels

        c = self.cfg
        before = self.black_box.queries
        classes = self.black_box(x01)
        sal = rise_saliency(x01, classes, self.masks(tuple(x01.shape[-2:]), x01.device), c.keep_prob,
                            self.black_box, c.query_batch)
        norm, salient = salient_mask(sal, c.threshold)
        levels = torch.where(salient, c.t_salient, c.t_rest).to(torch.int64)
        x = x01 * 2 - 1
        top = int(levels.max())
        out = x
        if top > 0:
            stride = c.ddim_stride if c.sampler == "ddim" else 1
            if c.sampler == "ddim":
                levels = snap_levels(levels, top, stride)
            noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            x_l = torch.where(levels > 0, self.schedule.q_sample(x, levels, noise), x)
            out = denoise(self.purifier, x_l, top, mode=c.sampler, stride=stride, t_map=levels, generator=g)
            out = torch.where(levels > 0, out, x)
        spent = (self.black_box.queries - before) // max(len(x01), 1)
        images = torch.where(levels > 0, ((out + 1) / 2).clamp(0, 1), x01)  # level-0 pixels: the input, exactly
        return SancdifiOutput(
            images=images.float(), saliency=norm.float(), salient=salient,
            noise_levels=levels, queries=torch.full((len(x01),), spent, dtype=torch.int64),
        )
