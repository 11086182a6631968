"""Candidate-set construction (DataElixir, "Candidate Set Construction").

Each image goes through ``rounds`` (n) rounds of forward noising to level ``T`` and the reverse process, each
round starting from the previous round's output; the intermediaries of the last ``keep_last`` (m) reverse steps
of every round form its candidate set (n · m images). Every candidate is labelled by the victim and scored by
its distance to the original (pixel SSIM + victim-feature cosine). The whole batch moves through one UNet call
per step. Purifying (:func:`purify_candidates`) does not involve the victim, scoring (:func:`score_candidates`)
does: DataElixir stores the purified candidates by image content so that datasets sharing images share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detoxops.config import DataElixirConfig
from detoxops.defenses.elixir.purify import candidate_distance
from detoxops.diffusion import denoise, step_levels
from detoxops.diffusion.noise import draw_noise
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
    purifier, victim: torch.nn.Module, x01: torch.Tensor, cfg: DataElixirConfig, generator,
    on_step: Callable[[int], None] | None = None,
) -> CandidateBatch:
    """Purify (:func:`purify_candidates`) and score (:func:`score_candidates`) one batch. ``on_step(n)`` after
    every denoising step of the ``n`` images (progress within a batch: a batch can be the whole dataset, and a
    round of DDPM at T = 150 is 150 UNet passes)."""
    x01 = x01.to(purifier.device)
    cands = purify_candidates(purifier, x01, cfg, generator, on_step=on_step)
    labels, dists = score_candidates(victim, x01, cands)
    return CandidateBatch(labels=labels.cpu(), distances=dists.float().cpu(), images=cands.cpu())


@torch.no_grad()
def purify_candidates(purifier, x01: torch.Tensor, cfg: DataElixirConfig, generator,
                      on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """The victim-independent half of stage 1: ``rounds`` chained rounds, the last ``keep_last`` intermediaries of
    each kept. ``(B, K, C, H, W)`` in [0, 1] (K = rounds · keep_last, round-major), on the purifier's device.
    ``generator``: a ``torch.Generator`` or a :class:`~detoxops.diffusion.noise.KeyedNoise`."""
    keep = set(kept_levels(cfg))
    x = x01.to(purifier.device) * 2 - 1
    kept: list[torch.Tensor] = []

    def collect(t_prev: int, x_t: torch.Tensor, x0_pred: torch.Tensor) -> None:
        if t_prev in keep:
            kept.append(((x_t.clamp(-1, 1) + 1) / 2).to(torch.float32))
        if on_step is not None:
            on_step(len(x_t))

    for _ in range(cfg.rounds):
        x = purification_round(purifier, x, cfg, generator, on_step=collect)
    return torch.stack(kept, 1)


@torch.no_grad()
def score_candidates(victim: torch.nn.Module, x01: torch.Tensor, cands: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The victim's label of every candidate and its distance to the original (pixel SSIM + victim-feature cosine,
    equation 5): ``(B, K)`` each, for images ``(B, C, H, W)`` and candidates ``(B, K, C, H, W)``, both in [0, 1]."""
    x01 = x01.float()
    orig_feats, _ = victim_features_and_labels(victim, x01)
    window = min(7, x01.shape[-1] - (1 - x01.shape[-1] % 2))  # SSIM window must fit the image
    labels, dists = [], []
    for j in range(cands.shape[1]):
        cand = cands[:, j].contiguous()
        feats, lab = victim_features_and_labels(victim, cand)
        s = ssim(x01, cand, window=window, data_range=1.0)
        cos = F.cosine_similarity(feats, orig_feats, dim=1)
        labels.append(lab)
        dists.append(candidate_distance(s, cos))
    return torch.stack(labels, 1), torch.stack(dists, 1)


def purification_round(purifier, x: torch.Tensor, cfg: DataElixirConfig, generator,
                       on_step: Callable | None = None) -> torch.Tensor:
    """One round: noise ``x`` (in [-1, 1]) to level ``T``, run the reverse process back to 0 (``on_step`` as
    :func:`detoxops.diffusion.denoise` calls it, after every step)."""
    noise = draw_noise(x.shape, generator, x.device, x.dtype)
    x_T = purifier.schedule.q_sample(x, cfg.T, noise)  # noqa: N806 - the paper's name
    stride = cfg.ddim_stride if cfg.sampler == "ddim" else 1
    return denoise(purifier, x_T, cfg.T, mode=cfg.sampler, stride=stride, generator=generator, on_step=on_step)


@torch.no_grad()
def purification_rounds(purifier, x01: torch.Tensor, cfg: DataElixirConfig, rounds: int,
                        generator) -> torch.Tensor:
    """``rounds`` more rounds as candidate construction chains them, each from the last one's output (no
    candidates kept, no victim): stage 4's ``target_rounds``. Images in [0, 1] in and out."""
    x = x01.to(purifier.device) * 2 - 1
    for _ in range(rounds):
        x = purification_round(purifier, x, cfg, generator)
    return ((x.clamp(-1, 1) + 1) / 2).to(torch.float32)


def steps_per_image(cfg: DataElixirConfig) -> int:
    """Denoising steps one image goes through (every round, every step): the unit of DataElixir's progress."""
    return cfg.rounds * len(step_levels(cfg.T, cfg.sampler, cfg.ddim_stride if cfg.sampler == "ddim" else 1))
