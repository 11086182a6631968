"""Trigger visibility and sample robustness (SampDetox §3.1, the data of its figure 2).

* **visibility** v = (1 − SSIM(x_clean, x_poisoned)) / 2 per sample: SSIM as
  ``skimage.metrics.structural_similarity(clean, poisoned, channel_axis=-1, data_range=255)`` on uint8 values
  (7×7 uniform window, sample covariance, mean over the cropped map and the channels); computed batched with
  :func:`detoxops.ssim.ssim`, which matches skimage (tests check both).
* **robustness** η_r: the smallest η on a grid (default 0, 0.01, …, 1) for which
  x_m = (1 − η)·x_p + η·ε, ε ~ N(0, I) (one fixed ε per sample), is *not* classified as the target. Noise is
  added in the diffusion space [−1, 1] (``space="diffusion"``, where ε ~ N(0, I) is the defenses' noise scale) or
  in [0, 1] (``space="unit"``); x_m is clamped back to [0, 1] for the classifier. η_r = 0 when x_p already misses
  the target, ``inf`` when no η on the grid flips it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

PredictFn = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {getattr(images, 'dtype', type(images))} "
                         f"{getattr(images, 'shape', '')}")
    return torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)


def ssim_u8(clean: np.ndarray, poisoned: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Per-sample mean SSIM of uint8 image pairs (skimage semantics, data_range 255, 7×7 window)."""
    if clean.shape != poisoned.shape:
        raise ValueError(f"visibility: shapes differ: {clean.shape} vs {poisoned.shape}")
    from detoxops.ssim import ssim

    a, b = _to_nchw(clean), _to_nchw(poisoned)
    out = [ssim(a[i : i + batch_size].double(), b[i : i + batch_size].double(), window=7, data_range=255.0)
           for i in range(0, len(a), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def visibility(clean: np.ndarray, poisoned: np.ndarray) -> np.ndarray:
    """v = (1 − SSIM)/2 per sample, in [0, 1]; 0 for identical images."""
    return (1.0 - ssim_u8(clean, poisoned)) / 2.0


def robustness(
    poisoned: np.ndarray,
    predict_fn: PredictFn,
    target: int,
    *,
    etas: Iterable[float] | None = None,
    seed: int = 0,
    space: Literal["diffusion", "unit"] = "diffusion",
    batch_size: int = 512,
    progress: bool = False,
) -> np.ndarray:
    """η_r per sample (see the module docstring). ``predict_fn`` maps float [0, 1] NCHW → labels.
    ``progress`` shows a bar over the η grid (the samples still hitting the target as its postfix)."""
    grid = np.linspace(0.0, 1.0, 101) if etas is None else np.sort(np.asarray(list(etas), dtype=np.float64))
    if grid.size == 0 or grid.min() < 0 or grid.max() > 1:
        raise ValueError("robustness: etas must be a non-empty set of values in [0, 1]")
    if space not in ("diffusion", "unit"):
        raise ValueError(f"robustness: space must be 'diffusion' or 'unit', got {space!r}")
    x = _to_nchw(poisoned).float() / 255
    base = 2 * x - 1 if space == "diffusion" else x
    eps = torch.randn(base.shape, generator=torch.Generator().manual_seed(seed))
    eta_r = np.full(len(x), np.inf)
    todo = np.arange(len(x))
    steps = grid
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(grid, desc="eta grid", unit="eta", leave=False)
    for eta in steps:  # samples are batched; only the grid is walked
        if todo.size == 0:
            break
        if progress:
            steps.set_postfix(hitting=int(todo.size))
        mixed = (1 - eta) * base[todo] + eta * eps[todo]
        x01 = ((mixed + 1) / 2 if space == "diffusion" else mixed).clamp(0, 1)
        pred = np.concatenate([np.asarray(torch.as_tensor(predict_fn(x01[i : i + batch_size])).cpu())
                               for i in range(0, len(todo), batch_size)])
        flipped = pred != target
        eta_r[todo[flipped]] = eta
        todo = todo[~flipped]
    return eta_r


def summarise(values: np.ndarray) -> dict[str, float]:
    """mean / median / std / min / max over finite values, plus counts (``n``, ``n_inf``)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    stats = {"n": float(v.size), "n_inf": float(v.size - finite.size)}
    if finite.size:
        stats |= {"mean": float(finite.mean()), "median": float(np.median(finite)), "std": float(finite.std()),
                  "min": float(finite.min()), "max": float(finite.max())}
    return stats


def visibility_robustness_rows(
    attack: str, clean: np.ndarray, poisoned: np.ndarray, predict_fn: PredictFn, target: int, **kwargs
) -> list[dict[str, float | int | str]]:
    """One row per sample (attack, index, v, eta_r): the points of SampDetox's figure 2 for one attack."""
    v = visibility(clean, poisoned)
    eta = robustness(poisoned, predict_fn, target, **kwargs)
    return [{"attack": attack, "index": i, "v": float(v[i]), "eta_r": float(eta[i])} for i in range(len(v))]


def paired_rows(
    attack: str,
    clean,
    triggered,
    predict_fn: PredictFn,
    target: int,
    *,
    max_images: int | None = None,
    seed: int = 0,
    **robustness_kwargs,
) -> list[dict[str, float | int | str]]:
    """Figure-2 rows for a triggered test ``ImageSet`` and the clean ``ImageSet`` it was made from.

    Each triggered image is paired with its clean counterpart by ``source_index``; ``index`` in the rows is that
    ``source_index`` (the same image has the same index under every attack). ``max_images`` keeps a seeded random
    subset (in source order); ``seed`` also fixes η_r's noise. Raises ValueError when a triggered image has no
    clean counterpart or the shapes differ.
    """
    src = np.asarray(triggered.source_index, dtype=np.int64)
    pick = np.arange(len(src))
    if max_images is not None and len(src) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(src), size=max_images, replace=False))
    src = src[pick]
    by_source = {int(s): i for i, s in enumerate(np.asarray(clean.source_index))}
    missing = [int(s) for s in src if int(s) not in by_source]
    if missing:
        raise ValueError(f"{attack}: {len(missing)} triggered image(s) have no clean counterpart with the same "
                         f"source_index (first: {missing[:5]}); is the clean set the one the attack was applied to?")
    clean_u8 = np.ascontiguousarray(clean.images[[by_source[int(s)] for s in src]])
    poisoned_u8 = np.ascontiguousarray(triggered.images[pick])
    if clean_u8.shape != poisoned_u8.shape:
        raise ValueError(f"{attack}: clean images {clean_u8.shape[1:]} and triggered images "
                         f"{poisoned_u8.shape[1:]} differ in shape")
    rows = visibility_robustness_rows(attack, clean_u8, poisoned_u8, predict_fn, target, seed=seed,
                                      **robustness_kwargs)
    for row, s in zip(rows, src, strict=True):
        row["index"] = int(s)
    return rows


def attack_summary(rows: list[dict]) -> dict[str, float]:
    """Per-attack figure-2 summary of ``rows`` (one attack): ``n``, ``hits`` (η_r > 0: the victim sends the
    triggered image to the target), v mean / median over all rows, η_r mean / median over the hits with finite
    η_r, and ``n_inf`` (hits that no η on the grid flips)."""
    v = np.array([r["v"] for r in rows], dtype=np.float64)
    eta = np.array([r["eta_r"] for r in rows], dtype=np.float64)
    hit = eta > 0
    sv, se = summarise(v), summarise(eta[hit])
    nan = float("nan")
    return {"n": int(v.size), "hits": int(hit.sum()), "n_inf": int(se["n_inf"]),
            "v_mean": sv.get("mean", nan), "v_median": sv.get("median", nan),
            "eta_r_mean": se.get("mean", nan), "eta_r_median": se.get("median", nan)}


def write_rows_csv(rows: list[dict], path: str | Path) -> Path:
    """Write figure-2 rows as CSV (``robustness/visibility_robustness.csv`` in the tracking layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["attack", "index", "v", "eta_r"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def perturbation_stats(clean: np.ndarray, poisoned: np.ndarray) -> dict[str, float]:
    """Mean per-sample L2 (on the [0, 1] scale), L∞ (grey levels, mean and max), PSNR (dB) and visibility v
    (mean / median) — the attack spec's §1.8 sanity table plus SampDetox's v."""
    if clean.shape != poisoned.shape:
        raise ValueError(f"perturbation_stats: shapes differ: {clean.shape} vs {poisoned.shape}")
    d = (poisoned.astype(np.float64) - clean.astype(np.float64)).reshape(len(clean), -1)
    mse = ((d / 255) ** 2).mean(axis=1)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-12))
    linf = np.abs(d).max(axis=1)
    v = visibility(clean, poisoned)
    return {"l2": float(np.sqrt(((d / 255) ** 2).sum(axis=1)).mean()), "linf_mean": float(linf.mean()),
            "linf_max": float(linf.max()), "psnr": float(psnr[mse > 0].mean()) if (mse > 0).any() else np.inf,
            "v_mean": float(v.mean()), "v_median": float(np.median(v))}


def figure2_points(
    attack, images: np.ndarray, labels: np.ndarray, predict_fn: PredictFn, *, samples: int = 200, seed: int = 0,
    **robustness_kwargs,
) -> list[dict[str, float | int | str]]:
    """SampDetox figure 2 for one attack: ``samples`` random non-target clean images (200 in the paper), triggered
    by ``attack`` (fitted), scored with v and η_r against ``predict_fn`` (the attack's victim). ``index`` is the
    position in ``images``."""
    candidates = np.flatnonzero(np.asarray(labels) != attack.target)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(candidates, size=min(samples, len(candidates)), replace=False))
    clean = np.ascontiguousarray(images[pick])
    poisoned = attack.apply_trigger(clean, np.asarray(labels)[pick])
    rows = visibility_robustness_rows(attack.name, clean, poisoned, predict_fn, attack.target,
                                      seed=seed, **robustness_kwargs)
    for row, idx in zip(rows, pick, strict=True):
        row["index"] = int(idx)
    return rows
