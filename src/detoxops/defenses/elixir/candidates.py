"""Candidate-set construction (DataElixir, "Candidate Set Construction").

Each image goes through ``rounds`` (n) rounds of forward noising to level ``T`` and the reverse process, each
round starting from the previous round's output; the intermediaries of the last ``keep_last`` (m) reverse steps
of every round form its candidate set (n · m images). Every candidate is labelled by the victim and scored by
its distance to the original (pixel SSIM + victim-feature cosine). The whole batch moves through one UNet call
per step; intermediaries are consumed as they are produced (``on_step``), never all held at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detoxops.config import DataElixirConfig
from detoxops.defenses.elixir.purify import candidate_distance
from detoxops.diffusion import denoise, step_levels
from detoxops.ssim import ssim


@dataclass
class CandidateBatch:
    labels: torch.Tensor  # (B, K) victim label of each candidate, K = rounds * keep_last
    distances: torch.Tensor  # (B, K) distance to the original in [0, 1]
    images: torch.Tensor  # (B, K, C, H, W) candidates in [0, 1]


def kept_levels(cfg: DataElixirConfig) -> list[int]:
    """Levels reached by the last ``keep_last`` reverse steps of a round (ending at level 0)."""
    visited = step_levels(cfg.T, cfg.sampler, cfg.ddim_stride if cfg.sampler == "ddim" else 1)
    reached = visited[1:] + [0]
    if len(reached) < cfg.keep_last:
        raise ValueError(
            f"dataelixir.keep_last = {cfg.keep_last} but a round has only {len(reached)} reverse steps "
            f"(T = {cfg.T}, sampler {cfg.sampler})"
        )
    return reached[-cfg.keep_last :]


def victim_features_and_labels(victim: torch.nn.Module, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = victim.features(x01)
    return feats, victim.head(feats).argmax(1)


@torch.no_grad()
def build_candidates(
    purifier, victim: torch.nn.Module, x01: torch.Tensor, cfg: DataElixirConfig, generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
) -> CandidateBatch:
    """``on_step(n)`` after every denoising step of the ``n`` images (progress within a batch: a batch can be the
    whole dataset, and a round of DDPM at T = 150 is 150 UNet passes)."""
    device = purifier.device
    x01 = x01.to(device)
    keep = set(kept_levels(cfg))
    orig_feats, _ = victim_features_and_labels(victim, x01)
    labels, dists, images = [], [], []
    x = x01 * 2 - 1
    window = min(7, x01.shape[-1] - (1 - x01.shape[-1] % 2))  # SSIM window must fit the image
    for _ in range(cfg.rounds):
        kept: list[torch.Tensor] = []

        def collect(t_prev: int, x_t: torch.Tensor, x0_pred: torch.Tensor, kept: list = kept) -> None:
            if t_prev in keep:
                kept.append(((x_t.clamp(-1, 1) + 1) / 2).to(torch.float32))
            if on_step is not None:
                on_step(len(x_t))

        x = purification_round(purifier, x, cfg, generator, on_step=collect)
        for cand in kept:
            feats, lab = victim_features_and_labels(victim, cand)
            s = ssim(x01.float(), cand, window=window, data_range=1.0)
            cos = F.cosine_similarity(feats, orig_feats, dim=1)
            labels.append(lab)
            dists.append(candidate_distance(s, cos))
            images.append(cand)
    return CandidateBatch(
        labels=torch.stack(labels, 1).cpu(),
        distances=torch.stack(dists, 1).float().cpu(),
        images=torch.stack(images, 1).cpu(),
    )


def purification_round(purifier, x: torch.Tensor, cfg: DataElixirConfig, generator: torch.Generator,
                       on_step: Callable | None = None) -> torch.Tensor:
    """One round: noise ``x`` (in [-1, 1]) to level ``T``, run the reverse process back to 0 (``on_step`` as
    :func:`detoxops.diffusion.denoise` calls it, after every step)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_T = purifier.schedule.q_sample(x, cfg.T, noise)  # noqa: N806 - the paper's name
    stride = cfg.ddim_stride if cfg.sampler == "ddim" else 1
    return denoise(purifier, x_T, cfg.T, mode=cfg.sampler, stride=stride, generator=generator, on_step=on_step)


@torch.no_grad()
def purification_rounds(purifier, x01: torch.Tensor, cfg: DataElixirConfig, rounds: int,
                        generator: torch.Generator) -> torch.Tensor:
    """``rounds`` more rounds as candidate construction chains them, each from the last one's output (no
    candidates kept, no victim): stage 4's ``target_rounds``. Images in [0, 1] in and out."""
    x = x01.to(purifier.device) * 2 - 1
    for _ in range(rounds):
        x = purification_round(purifier, x, cfg, generator)
    return ((x.clamp(-1, 1) + 1) / 2).to(torch.float32)


def steps_per_image(cfg: DataElixirConfig) -> int:
    """Denoising steps one image goes through (every round, every step): the unit of DataElixir's progress."""
    return cfg.rounds * len(step_levels(cfg.T, cfg.sampler, cfg.ddim_stride if cfg.sampler == "ddim" else 1))
