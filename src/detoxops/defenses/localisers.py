"""Trigger localisers: where in an image is the trigger likely to be?

Every localiser maps an input batch ``x`` and its stage-1 restoration to a per-pixel *trigger likelihood*
(B, 1, H, W) in [0, 1], higher = more likely trigger. SampDetox's stage 2 turns it into noise levels. All work
in the diffusion space [-1, 1] and on whole batches. A localiser that needs its own restorations calls
``restore(x, t)`` (noise ``x`` to level ``t`` and denoise, with the defense's sampler and generator).

* ``PixelSSIM`` -- the paper (appendix A.4): per-pixel SSIM between the input and its stage-1 restoration,
  on images in [0, 1] with ``data_range = 1``; suspicion = (1 - SSIM) / 2.
* ``PixelSSIM(public_range=True)`` -- the public code's variant: the same SSIM computed with
  ``data_range = 255`` on [0, 1] images (a data-range mismatch). C1, C2 then dwarf the local statistics and
  the map becomes roughly a local mean-difference map.
* ``DiffMap`` -- mean |input - restoration at t_loc| over channels and a ``window`` neighbourhood; t_loc is its
  own parameter, decoupled from the global t1 (a high-contrast patch survives a t1 = 20 restoration, so a
  map built from it cannot single the patch out; see docs/sampdetox.md).
* ``SpreadMap`` -- standard deviation across K stochastic restorations at t_loc (where the purifier is
  unsure what belongs there), averaged the same way.

``map_norm`` turns the raw suspicion into [0, 1]: ``minmax`` per image (every image, clean ones included,
gets a "most suspicious" region), ``scale`` (divide by a fixed ``map_scale`` and clip; can leave a clean
image all-zero), ``none`` (clip only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import torch

from detoxops.config import SampDetoxConfig
from detoxops.ssim import ssim_map, uniform_filter

__all__ = [
    "Localiser",
    "RestoreFn",
    "PixelSSIM",
    "DiffMap",
    "SpreadMap",
    "normalise_map",
    "build_localiser",
]

RestoreFn = Callable[[torch.Tensor, int], torch.Tensor]
MapNorm = Literal["minmax", "none", "scale"]


class Localiser(Protocol):
    name: str

    def __call__(self, x: torch.Tensor, stage1: torch.Tensor, restore: RestoreFn) -> torch.Tensor: ...


def normalise_map(raw: torch.Tensor, norm: MapNorm = "minmax", scale: float = 1.0) -> torch.Tensor:
    """Raw suspicion (B, 1, H, W), >= 0 → [0, 1]. A constant map normalises to all zeros under minmax."""
    if norm == "minmax":
        flat = raw.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
        span = hi - lo
        return torch.where(
            span > 0, (raw - lo) / span.clamp_min(torch.finfo(raw.dtype).tiny), torch.zeros_like(raw)
        )
    if norm == "scale":
        if not scale > 0:
            raise ValueError(f"map_scale must be positive, got {scale}")
        return (raw / scale).clamp(0.0, 1.0)
    if norm == "none":
        return raw.clamp(0.0, 1.0)
    raise ValueError(f"unknown map_norm {norm!r}; expected minmax, scale or none")


class PixelSSIM:
    """Paper's PixelSSIM localiser (or, with ``public_range=True``, the public code's data_range = 255)."""

    def __init__(
        self, window: int = 7, norm: MapNorm = "minmax", scale: float = 1.0, public_range: bool = False
    ):
        self.window = int(window)
        self.norm = norm
        self.scale = float(scale)
        self.public_range = bool(public_range)
        self.name = "ssim_public" if public_range else "pixel_ssim"

    def __call__(self, x: torch.Tensor, stage1: torch.Tensor, restore: RestoreFn) -> torch.Tensor:
        a = (x.clamp(-1, 1) + 1) / 2
        b = (stage1.clamp(-1, 1) + 1) / 2
        data_range = 255.0 if self.public_range else 1.0
        s = ssim_map(a, b, window=self.window, data_range=data_range, channel_mean=True)
        return normalise_map((1.0 - s) / 2.0, self.norm, self.scale)


class DiffMap:
    """|x - restore(x, t_loc)| averaged over channels and a window; reuses stage 1 when t_loc == t1."""

    name = "diff"

    def __init__(self, t_loc: int, t1: int, window: int = 5, norm: MapNorm = "minmax", scale: float = 1.0):
        self.t_loc, self.t1, self.window = int(t_loc), int(t1), int(window)
        self.norm, self.scale = norm, float(scale)

    def __call__(self, x: torch.Tensor, stage1: torch.Tensor, restore: RestoreFn) -> torch.Tensor:
        restored = stage1 if self.t_loc == self.t1 else restore(x, self.t_loc)
        # /2: a difference in [-1, 1] space, reported on the [0, 1] image scale
        raw = (x - restored).abs().mean(dim=1, keepdim=True) / 2
        return normalise_map(uniform_filter(raw, self.window), self.norm, self.scale)


class SpreadMap:
    """Standard deviation across K stochastic restorations at t_loc, averaged over channels and a window."""

    name = "spread"

    def __init__(self, t_loc: int, k: int = 4, window: int = 5, norm: MapNorm = "minmax", scale: float = 1.0):
        if k < 2:
            raise ValueError(f"spread localiser needs k >= 2 restorations, got {k}")
        self.t_loc, self.k, self.window = int(t_loc), int(k), int(window)
        self.norm, self.scale = norm, float(scale)

    def __call__(self, x: torch.Tensor, stage1: torch.Tensor, restore: RestoreFn) -> torch.Tensor:
        b = x.shape[0]
        restored = restore(x.repeat(self.k, 1, 1, 1), self.t_loc).view(self.k, b, *x.shape[1:])
        raw = restored.std(dim=0).mean(dim=1, keepdim=True) / 2
        return normalise_map(uniform_filter(raw, self.window), self.norm, self.scale)


def build_localiser(cfg: SampDetoxConfig) -> Localiser:
    """The localiser ``cfg`` names (profile presets applied)."""
    c = cfg.resolved()
    norm, scale = c.map_norm, float(c.map_scale)
    if c.localiser == "pixel_ssim":
        return PixelSSIM(c.ssim_window, norm, scale)
    if c.localiser == "ssim_public":
        return PixelSSIM(c.ssim_window, norm, scale, public_range=True)
    if c.localiser == "diff":
        return DiffMap(c.t_loc, c.t1, c.loc_window, norm, scale)
    if c.localiser == "spread":
        return SpreadMap(c.t_loc, c.spread_k, c.loc_window, norm, scale)
    raise ValueError(f"sampdetox.localiser: unknown localiser {c.localiser!r}")
