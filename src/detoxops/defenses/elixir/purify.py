"""Purified-image selection (DataElixir equation 5): the candidate at a given percentile of the distance to the
original, distance = 0.5 (1 − ssim') + 0.5 (1 − cos') with pixel SSIM and victim-feature cosine mapped to [0, 1]."""

from __future__ import annotations

import numpy as np
import torch


def candidate_distance(ssim_values: torch.Tensor, cosine_values: torch.Tensor) -> torch.Tensor:
    """Both in [-1, 1] → distance in [0, 1] (0 = identical to the original)."""
    ssim01 = (ssim_values.clamp(-1, 1) + 1) / 2
    cos01 = (cosine_values.clamp(-1, 1) + 1) / 2
    return 0.5 * (1 - ssim01) + 0.5 * (1 - cos01)


def select_at_percentile(distances: np.ndarray, percentile: float) -> np.ndarray:
    """(N, K) distances → (N,) index of the candidate ranked at ``percentile`` % (nearest rank, ascending)."""
    if distances.ndim != 2 or distances.shape[1] == 0:
        raise ValueError(f"distances must be (N, K) with K ≥ 1, got {distances.shape}")
    order = np.argsort(distances, axis=1, kind="stable")
    rank = int(round(percentile / 100.0 * (distances.shape[1] - 1)))
    return order[:, rank]
