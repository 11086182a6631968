"""How well a trigger map localises the trigger: ROC-AUC and mean stage-2 level on trigger vs other pixels.

The ground truth is a boolean (N, H, W) mask of trigger pixels: the attack's own ``trigger_mask`` where it
defines one, otherwise the pixels the trigger changed (``changed_pixels``: clean vs triggered image differs by
more than a tolerance in any channel). AUC is the probability that a random trigger pixel scores higher than a
random other pixel (ties count half), computed from average ranks (Mann-Whitney U), vectorised over images.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["roc_auc", "changed_pixels", "trigger_map_quality", "trigger_survival"]


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def roc_auc(scores, positives, per_image: bool = True) -> np.ndarray | float:
    """ROC-AUC of ``scores`` for ``positives``.

    Args:
        scores: (N, ...) float; flattened per image.
        positives: (N, ...) bool, same number of elements per image.
        per_image: True → (N,) AUC per image (NaN where an image has only one class); False → one pooled AUC
            over all pixels of all images (NaN if only one class overall).
    """
    s = _as_numpy(scores).astype(np.float64)
    y = _as_numpy(positives).astype(bool)
    if s.shape[0] != y.shape[0] or s.size != y.size:
        raise ValueError(f"roc_auc: scores {s.shape} and positives {y.shape} do not match")
    if not per_image:
        s, y = s.reshape(1, -1), y.reshape(1, -1)
    else:
        s, y = s.reshape(s.shape[0], -1), y.reshape(y.shape[0], -1)
    ranks = rankdata(s, axis=1, method="average")
    n_pos = y.sum(axis=1).astype(np.float64)
    n_neg = y.shape[1] - n_pos
    rank_sum = np.where(y, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    return auc if per_image else float(auc[0])


def changed_pixels(clean_u8: np.ndarray, triggered_u8: np.ndarray, tolerance: int = 8) -> np.ndarray:
    """(N, H, W) bool: pixels where any channel of the triggered image differs from the clean one by > tolerance."""
    a = np.asarray(clean_u8, dtype=np.int16)
    b = np.asarray(triggered_u8, dtype=np.int16)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"changed_pixels: expected two (N, H, W, C) arrays of one shape, got {a.shape}, {b.shape}"
        )
    return (np.abs(a - b) > tolerance).any(axis=-1)


def trigger_map_quality(trigger_map, noise_levels, mask) -> dict[str, float]:
    """Summary of a batch: pooled AUC, mean per-image AUC, mean level on trigger pixels and on the others.

    ``trigger_map`` / ``noise_levels``: (N, 1, H, W) or (N, H, W); ``mask``: (N, H, W) bool.
    """
    m = _as_numpy(mask).astype(bool)
    tm = _as_numpy(trigger_map).reshape(m.shape)
    lv = _as_numpy(noise_levels).reshape(m.shape).astype(np.float64)
    per_image = roc_auc(tm, m, per_image=True)
    return {
        "map_auc": roc_auc(tm, m, per_image=False),
        "map_auc_per_image": float(np.nanmean(per_image)) if np.isfinite(per_image).any() else float("nan"),
        "trigger_level": float(lv[m].mean()) if m.any() else float("nan"),
        "other_level": float(lv[~m].mean()) if (~m).any() else float("nan"),
        "trigger_fraction": float(m.mean()),
    }


def trigger_survival(clean_u8, triggered_u8, detoxed_u8, mask=None) -> np.ndarray:
    """(N,) fraction of the trigger left after detoxification, victim-free.

    With d = triggered - clean (the trigger) and r = detoxed - clean (what the output still carries), the
    survival is <r, d> / <d, d> over the trigger pixels (all pixels when ``mask`` is None): 1 means the trigger
    is intact, 0 that nothing along it is left (negative: over-corrected). NaN for an image the trigger does
    not change.
    """
    c = np.asarray(clean_u8, dtype=np.float64)
    d = np.asarray(triggered_u8, dtype=np.float64) - c
    r = np.asarray(detoxed_u8, dtype=np.float64) - c
    if mask is not None:
        m = np.asarray(mask, dtype=bool)[..., None]
        d, r = d * m, r * m
    num = (r * d).reshape(len(d), -1).sum(1)
    den = (d * d).reshape(len(d), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)
