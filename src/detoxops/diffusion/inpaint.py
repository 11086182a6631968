"""Inpainting from full noise with clean context: the test a purifier for per-pixel noise must pass.

A square hole of every image is put at full noise (level T) while the rest stays clean (level 0) — the extreme
case of SampDetox's stage 2 — and restored by one of three methods:

* ``per-pixel``: today's sampler, ``denoise(purifier, x, t_map=hole·T)``: the hole is denoised, the context is
  never changed (a uniform purifier is called with timestep t for the whole image, clean context included);
* ``repaint``: :func:`detoxops.diffusion.samplers.repaint`, the context re-noised to every step's level so the
  network sees one level everywhere (``resample`` = RePaint's U);
* with a :class:`~detoxops.diffusion.levelmap.LevelMapPurifier` ``per-pixel`` is the same call, and the network
  sees the map.

Every method starts from the same noise in the hole (paired comparison); PSNR is measured inside the hole only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from detoxops.diffusion.purifier import Purifier
from detoxops.diffusion.samplers import denoise, repaint, snap_levels

__all__ = ["square_holes", "inpaint", "evaluate_inpainting", "masked_psnr"]

Method = Literal["per-pixel", "repaint"]


def square_holes(n: int, size: int, side: int, generator: torch.Generator) -> Tensor:
    """``(n, 1, size, size)`` bool masks, one ``side × side`` square per image at a random position (True = hole)."""
    if not 1 <= side <= size:
        raise ValueError(f"hole side {side} outside [1, {size}]")
    top = torch.randint(0, size - side + 1, (n,), generator=generator)
    left = torch.randint(0, size - side + 1, (n,), generator=generator)
    ar = torch.arange(size)
    rows = (ar >= top.view(-1, 1)) & (ar < (top + side).view(-1, 1))
    cols = (ar >= left.view(-1, 1)) & (ar < (left + side).view(-1, 1))
    return (rows.view(n, size, 1) & cols.view(n, 1, size)).view(n, 1, size, size)


def masked_psnr(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Per-image PSNR (dB, images in [-1, 1]) over the pixels where ``mask`` is True (all channels)."""
    m = mask.expand_as(a).float()
    mse = ((a - b).pow(2) * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def inpaint(
    purifier: Purifier, x0: Tensor, hole: Tensor, noise: Tensor, *, method: Method = "per-pixel",
    t_start: int | None = None, mode: Literal["ddpm", "ddim"] = "ddim", stride: int = 1, resample: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Restore ``hole`` (True = unknown) of ``x0`` from level ``t_start`` (default T) with clean context.

    The hole starts as ``q_sample(x0, t_start, noise)`` for every method, so methods differ only in how they
    treat the context."""
    sched = purifier.schedule
    top = int(t_start if t_start is not None else sched.T)
    hole = hole.to(x0.device).bool()
    if method == "per-pixel":
        t_map = hole.long() * top
        if mode == "ddim":
            t_map = snap_levels(t_map, top, stride)
        x_in = torch.where(hole, sched.q_sample(x0, top, noise), x0)
        return denoise(purifier, x_in, top, mode=mode, stride=stride, t_map=t_map, generator=generator)
    if method == "repaint":
        return repaint(purifier, x0, ~hole, top, mode=mode, stride=stride, resample=resample,
                       x_start=sched.q_sample(x0, top, noise), generator=generator)
    raise ValueError(f"unknown inpainting method {method!r}; use 'per-pixel' or 'repaint'")


@torch.no_grad()
def evaluate_inpainting(
    purifier: Purifier, images_u8: np.ndarray, sides: tuple[int, ...] = (3, 4, 8), *,
    method: Method = "per-pixel", t_start: int | None = None, mode: Literal["ddpm", "ddim"] = "ddim",
    stride: int = 50, resample: int = 1, batch_size: int = 64, seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Per hole side: mean PSNR inside the hole of the restoration (``psnr_hole``), of the hole filled with the
    context's mean colour (``psnr_hole_mean_fill``, a trivial reference) and the number of images.

    Hole positions and starting noise depend only on ``seed``, the side and the image index, so two purifiers or
    methods evaluated with the same arguments see the same holes and the same noise."""
    from detoxops.diffusion.train import images_to_diffusion

    x_all = images_to_diffusion(np.asarray(images_u8))
    n, _, size, _ = x_all.shape
    out: dict[int, dict[str, float]] = {}
    for side in sides:
        gen = torch.Generator().manual_seed(seed * 1000 + int(side))
        holes = square_holes(n, size, int(side), gen)
        noise = torch.randn(x_all.shape, generator=gen)
        sample_gen = torch.Generator(device=purifier.device).manual_seed(seed)
        sums = {"psnr_hole": 0.0, "psnr_hole_mean_fill": 0.0}
        for i in range(0, n, batch_size):
            x0 = x_all[i: i + batch_size].to(purifier.device)
            hole = holes[i: i + batch_size].to(purifier.device)
            restored = inpaint(purifier, x0, hole, noise[i: i + batch_size].to(purifier.device), method=method,
                               t_start=t_start, mode=mode, stride=stride, resample=resample,
                               generator=sample_gen).clamp(-1, 1)
            ctx = (~hole).float()
            mean = (x0 * ctx).sum((2, 3), keepdim=True) / ctx.sum((2, 3), keepdim=True)
            filled = torch.where(hole, mean.expand_as(x0), x0)
            sums["psnr_hole"] += float(masked_psnr(restored, x0, hole).sum())
            sums["psnr_hole_mean_fill"] += float(masked_psnr(filled, x0, hole).sum())
        out[int(side)] = {k: v / n for k, v in sums.items()} | {"n": n}
    return out
