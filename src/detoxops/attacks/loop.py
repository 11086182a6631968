"""Shared machinery of the training-loop attacks (WaNet, BPP): per-batch counts, the snapshot convention for the
saved poisoned training set, and BackdoorBench's batch-level ``PostTensorTransform``.

**Per batch** (BackdoorBench ``attack/wanet.py`` / ``attack/bpp.py``): the loader is shuffled; the first
``num_bd = int(ratio · B)`` samples of a batch are backdoored and relabelled to the target, the next ``num_cross``
are modified but keep their true label (WaNet's noise mode, BPP's negative samples), the rest stay clean. When
``ratio · B < 1`` a batch gets one backdoored sample with probability ``ratio · B``
(``generalize_to_lower_pratio``).

**Snapshot** (what ``poison_train_arrays`` / ``poison_datasets`` save, as BackdoorBench's ``bd_train``): the same
rule applied once to an *unshuffled* pass: in every block of ``batch_size`` consecutive indices (the last block may
be shorter) the first ``num_bd`` are backdoored (flag ``poisoned``, label = target) and the next ``num_cross`` are
cross / negative samples (true label, flag not set). The positions are deterministic, not random. A victim trained
through the loop never sees this snapshot: it sees fresh positions every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def bd_count(batch_len: int, ratio: float, rng: np.random.Generator | None = None) -> int:
    """``int(ratio · batch_len)``; below one sample, one sample with probability ``ratio · batch_len``."""
    expected = ratio * batch_len
    if expected >= 1 or rng is None:
        return int(expected)
    return int(rng.random() < expected)


def snapshot_indices(
    n: int,
    batch_size: int,
    ratio: float,
    cross_count: Callable[[int, int], int],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(backdoored indices, cross indices) of an unshuffled pass over ``n`` samples in blocks of ``batch_size``.

    ``cross_count(num_bd, block_len)`` gives the cross / negative count of a block (WaNet: ``int(num_bd · 2)``,
    BPP: ``int(block_len · neg_ratio)``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    bd, cross = [], []
    for start in range(0, n, batch_size):  # one iteration per batch, not per sample
        length = min(batch_size, n - start)
        nb = bd_count(length, ratio, rng)
        nc = min(cross_count(nb, length), length - nb)
        bd.append(np.arange(start, start + nb))
        cross.append(np.arange(start + nb, start + nb + nc))
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(bd).astype(np.int64) if bd else empty,
            np.concatenate(cross).astype(np.int64) if cross else empty)


def gen_device(generator: torch.Generator | None) -> torch.device:
    """The device random numbers must be drawn on for ``generator`` (CPU when there is none)."""
    return generator.device if generator is not None else torch.device("cpu")


def uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    """One uniform draw in [low, high) from ``generator`` (on its own device)."""
    return float(torch.empty(1, device=gen_device(generator)).uniform_(low, high, generator=generator))


def post_tensor_transform(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    crop_pad: int = 5,
    crop_p: float = 0.8,
    rotation_deg: float = 10.0,
    rotation_p: float = 0.5,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """BackdoorBench's batch-level augmentation for WaNet / BPP: random crop (pad ``crop_pad``) with p = 0.8,
    random rotation (±``rotation_deg``) with p = 0.5, horizontal flip with p = 0.5 — one draw for the whole batch.

    BackdoorBench runs it on the normalised batch, so its zero padding is the dataset mean colour; here the batch
    is in [0, 1] and the padding is black.
    """
    n, _, h, w = x.shape
    if crop_pad > 0 and uniform(generator, 0, 1) < crop_p:
        padded = F.pad(x, (crop_pad,) * 4)
        dy, dx = (int(v) for v in torch.randint(0, 2 * crop_pad + 1, (2,), generator=generator,
                                                device=gen_device(generator)))
        x = padded[:, :, dy : dy + h, dx : dx + w]
    if rotation_deg > 0 and uniform(generator, 0, 1) < rotation_p:
        angle = math.radians(uniform(generator, -rotation_deg, rotation_deg))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if flip_p > 0 and uniform(generator, 0, 1) < flip_p:
        x = x.flip(-1)
    return x.contiguous()


def check_batch(x: torch.Tensor, y: torch.Tensor, size: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name}.batch_transform expects a float (B, C, H, W) tensor in [0, 1]")
    if tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{name} was built for {size}x{size} images, got a batch of {tuple(x.shape[-2:])}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"{name}.batch_transform expects labels of shape ({x.shape[0]},)")
