"""Shared machinery of the training-loop attacks (WaNet, BPP, Input-Aware, LIRA): per-batch counts and poisoning,
the snapshot convention for the saved poisoned training set, and BackdoorBench's batch-level
``PostTensorTransform``.

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
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from detoxops.attacks.base import Attack


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


class LoopAttack(Attack):
    """Base of the training-loop attacks: ``kind`` "loop", their own augmentation, and the snapshot convention
    above with ``options.batch_size`` blocks and :meth:`cross_count` cross / negative samples per block."""

    kind: ClassVar[Literal["data", "loop"]] = "loop"
    replaces_augmentation: ClassVar[bool] = True

    def cross_count(self, num_bd: int, length: int) -> int:
        """Cross / negative samples of a batch or snapshot block of ``length`` with ``num_bd`` backdoored (none
        by default; capped at ``length − num_bd`` by the callers)."""
        return 0

    def snapshot_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(backdoored, cross) indices of the saved training set of ``n`` samples."""
        return snapshot_indices(n, self.options.batch_size, self.poison_ratio, self.cross_count, self.seed)

    def poison_indices(self, labels: np.ndarray) -> np.ndarray:
        return self.snapshot_indices(len(labels))[0]


def snapshot_poison(
    images: np.ndarray,
    labels: np.ndarray,
    bd: np.ndarray,
    trigger: Callable[[np.ndarray], np.ndarray],
    target: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, flags) of the snapshot with ``trigger`` applied to ``images[bd]``, relabelled to ``target``
    and flagged; the caller fills in its cross / negative samples (true labels, no flag)."""
    out_images, out_labels = images.copy(), labels.astype(np.int64, copy=True)
    flags = np.zeros(len(labels), dtype=bool)
    if len(bd):
        out_images[bd] = trigger(images[bd])
        out_labels[bd] = target
        flags[bd] = True
    return out_images, out_labels, flags


def snapshot_donors(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A random *other* training index for every index of ``idx`` (shift by 1..n − 1 modulo ``n``, seeded)."""
    rng = np.random.default_rng(seed)
    return (idx + rng.integers(1, n, size=len(idx))) % n


def gen_device(generator: torch.Generator | None) -> torch.device:
    """The device random numbers must be drawn on for ``generator`` (CPU when there is none)."""
    return generator.device if generator is not None else torch.device("cpu")


def uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    """One uniform draw in [low, high) from ``generator`` (on its own device)."""
    return float(torch.empty(1, device=gen_device(generator)).uniform_(low, high, generator=generator))


def batch_counts(
    b: int,
    ratio: float,
    generator: torch.Generator | None,
    cross_count: Callable[[int, int], int] | None = None,
) -> tuple[int, int]:
    """(num_bd, num_cross) of a training batch of ``b`` samples: ``int(ratio · b)`` backdoored (below one, one
    with probability ``ratio · b``, one uniform draw from ``generator``) and ``min(cross_count(num_bd, b),
    b − num_bd)`` cross / negative samples (none without ``cross_count``), as :func:`snapshot_indices` counts a
    block."""
    expected = ratio * b
    nb = int(expected) if expected >= 1 else int(uniform(generator, 0, 1) < expected)
    nc = min(cross_count(nb, b), b - nb) if cross_count is not None else 0
    return nb, nc


def poison_head(
    x: torch.Tensor,
    y: torch.Tensor,
    nb: int,
    target: int,
    trigger: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the batch whose first ``nb`` samples are ``trigger(x[:nb])`` with label ``target``."""
    x, y = x.clone(), y.clone()
    if nb:
        x[:nb] = trigger(x[:nb])
        y[:nb] = target
    return x, y


def batch_donors(
    start: int, count: int, b: int, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Donor positions for batch positions ``start`` .. ``start + count − 1``: another position of the batch of
    ``b`` (a random shift by 1..b − 1 modulo ``b``, so never itself), one ``randint`` draw from ``generator``."""
    shift = torch.randint(1, b, (count,), generator=generator, device=gen_device(generator)).to(device)
    return (torch.arange(start, start + count, device=device) + shift) % b


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


def maybe_post_transform(x: torch.Tensor, generator: torch.Generator | None, options: Any) -> torch.Tensor:
    """:func:`post_tensor_transform` with an attack's ``post_transform`` / ``random_crop`` / ``random_rotation``
    options (``x`` itself when ``post_transform`` is off)."""
    if not options.post_transform:
        return x
    return post_tensor_transform(x, generator, crop_pad=options.random_crop, rotation_deg=options.random_rotation)


def check_batch(x: torch.Tensor, y: torch.Tensor, size: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name}.batch_transform expects a float (B, C, H, W) tensor in [0, 1]")
    if tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{name} was built for {size}x{size} images, got a batch of {tuple(x.shape[-2:])}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"{name}.batch_transform expects labels of shape ({x.shape[0]},)")
