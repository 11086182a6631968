"""Reverse-process samplers that start from a given noisy batch (not from pure noise).

One network call per step for the whole batch; per-sample and per-pixel starting levels are handled with
masks (``torch.where``), never with Python loops over samples or pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from detoxops.diffusion.noise import KeyedNoise, draw_noise
from detoxops.diffusion.schedule import NoiseSchedule

__all__ = ["denoise", "repaint", "step_levels", "snap_levels"]

StepCallback = Callable[[int, Tensor, Tensor], None]


def step_levels(t_start: int, mode: Literal["ddpm", "ddim"] = "ddpm", stride: int = 1) -> list[int]:
    """Levels visited by the sampler, from ``t_start`` down to (excluding) 0.

    DDPM visits every level ``t_start, t_start-1, …, 1``. DDIM visits ``t_start, t_start-stride, …`` and
    always ends with a jump to level 0 (so the last visited level is in ``[1, stride]``).
    """
    if t_start < 0:
        raise ValueError(f"t_start must be ≥ 0, got {t_start}")
    if stride < 1:
        raise ValueError(f"stride must be ≥ 1, got {stride}")
    if mode == "ddpm":
        return list(range(t_start, 0, -1))
    if mode == "ddim":
        return list(range(t_start, 0, -stride))
    raise ValueError(f"unknown sampler mode {mode!r}; use 'ddpm' or 'ddim'")


def snap_levels(levels: Tensor, t_start: int, stride: int) -> Tensor:
    """Round per-pixel levels up onto the DDIM grid ``{t_start, t_start - stride, …}`` (0 stays 0).

    With strided sampling a pixel whose level lies between two grid points would otherwise be denoised as
    if it were less noisy than it is; snapping keeps the noise actually added and the step that removes it
    consistent.
    """
    levels = levels.long()
    offset = (t_start - levels).clamp_min(0)
    snapped = t_start - (offset // stride) * stride
    return torch.where(levels > 0, snapped.clamp_max(t_start), torch.zeros_like(levels))


@torch.no_grad()
def denoise(
    purifier: Callable[[Tensor, Tensor], Tensor],
    x_t: Tensor,
    t_start: int | Tensor,
    *,
    schedule: NoiseSchedule | None = None,
    mode: Literal["ddpm", "ddim"] = "ddpm",
    stride: int = 1,
    t_map: Tensor | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    generator: torch.Generator | KeyedNoise | None = None,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Run the reverse process from ``x_t`` (values in [-1, 1]) down to level 0.

    Levels follow the papers: level ``t`` has ``ᾱ_t``, level 0 is clean. One step "leaves" level ``t`` for
    ``t_prev`` (DDPM: ``t - 1``; DDIM: ``t - stride``, the last step always goes to 0), with one network call
    for the whole batch per step.

    Args:
        purifier: ``purifier(x, levels_(B,)) -> ε`` (a :class:`~detoxops.diffusion.Purifier`); its
            ``schedule`` attribute is used unless ``schedule`` is given. A purifier with
            ``accepts_level_map`` (:class:`~detoxops.diffusion.levelmap.LevelMapPurifier`) is also given
            ``level_map=min(t_map, t)`` at the step leaving level ``t`` — every pixel's current level — or
            ``None`` (uniform: every pixel at ``t``) without ``t_map``.
        x_t: ``(B, C, H, W)`` batch at its noise level(s).
        t_start: the level ``x_t`` is at — an ``int`` for the whole batch or a ``(B,)`` tensor per sample
            (then the sampler runs from the largest and a sample is only updated at steps leaving a level
            ``≤`` its own, exactly like a per-pixel map that is constant per sample).
        mode: ``"ddpm"`` (ancestral, every level, σ² = β̃_t) or ``"ddim"`` (strided; deterministic for
            ``eta = 0``).
        stride: DDIM stride (ignored by DDPM). Visited levels are ``top, top - stride, …`` (> 0), then 0.
        t_map: optional per-pixel levels ``(B, 1, H, W)`` (or ``(B, C, H, W)``), integers in ``[0, T]``, as
            produced for ``schedule.q_sample(x0, t_map, noise)`` (SampDetox stage 2). The sampler runs from
            ``top = t_map.max()`` and **a pixel is updated at the step leaving level t iff its own level
            ``≥ t``** (it keeps its input value before that); pixels at level 0 are never changed. With
            DDPM a pixel at level L is thus denoised exactly from L. With DDIM a pixel whose level is not on
            the grid ``{top, top - stride, …}`` joins at the first grid level ``≤`` its own, i.e. it is
            treated as slightly less noisy than it is; to avoid that, snap the map onto the grid *before*
            noising with :func:`snap_levels` (``snap_levels(t_map, top, stride)`` rounds levels up).
            Takes precedence over ``t_start``.
        eta: DDIM stochasticity (0 = deterministic, 1 = DDPM-like variance).
        clip_x0: clamp the predicted x̂_0 to [-1, 1] at every step (diffusers' ``clip_sample``).
        generator: source of the sampling noise (DDPM, DDIM with ``eta > 0``); drawn on ``x_t.device``
            in the order diffusers' schedulers draw it (one ``randn`` of the batch shape per step, none on
            the step into level 0). A :class:`~detoxops.diffusion.noise.KeyedNoise` draws every sample's noise
            from its own stream instead (batch-independent).
        on_step: ``on_step(t_prev, x, x0_pred)`` called after every step, where ``t_prev`` is the level
            just reached — DDPM: ``top - 1, top - 2, …, 0``; DDIM: ``top - stride, …, 0`` — ``x`` the batch
            at that level (pixels not yet started keep their input values) and ``x0_pred`` the prediction
            x̂_0 made at the level just left (clipped if ``clip_x0``). Both are fresh tensors the sampler
            never writes to again, so a callback may keep references (DataElixir keeps the last m) without
            cloning; nothing else is retained, so memory stays bounded.

    Returns:
        The batch at level 0.
    """
    sched = schedule if schedule is not None else getattr(purifier, "schedule", None)
    if sched is None:
        raise ValueError("denoise needs a schedule: pass schedule= or a purifier with a .schedule")
    if x_t.ndim != 4:
        raise ValueError(f"denoise expects a (B, C, H, W) batch, got shape {tuple(x_t.shape)}")
    batch = x_t.shape[0]

    levels: Tensor | None = None  # per-pixel or per-sample levels when not uniform
    if t_map is not None:
        if t_map.ndim != 4 or t_map.shape[0] != batch or t_map.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(f"t_map must have shape (B, 1|C, H, W) matching x_t, got {tuple(t_map.shape)}")
        levels = t_map.to(x_t.device).long()
        top = int(levels.max()) if levels.numel() else 0
    elif isinstance(t_start, Tensor) and t_start.ndim > 0:
        if t_start.shape != (batch,):
            raise ValueError(f"per-sample t_start must have shape ({batch},), got {tuple(t_start.shape)}")
        levels = t_start.to(x_t.device).long().view(-1, 1, 1, 1)
        top = int(levels.max()) if batch else 0
    else:
        top = int(t_start)
    if not 0 <= top <= sched.T:
        raise ValueError(f"start level {top} outside [0, {sched.T}]")

    x = x_t
    takes_map = bool(getattr(purifier, "accepts_level_map", False))
    visited = step_levels(top, mode, stride)
    for i, t in enumerate(visited):
        t_prev = visited[i + 1] if i + 1 < len(visited) else 0
        t_batch = torch.full((batch,), t, dtype=torch.long, device=x.device)
        if takes_map:  # a level-map purifier sees every pixel's current level (started pixels sit at t)
            eps = purifier(x, t_batch, level_map=None if levels is None else levels.clamp_max(t)).to(x.dtype)
        else:
            eps = purifier(x, t_batch).to(x.dtype)
        if mode == "ddpm":
            noise = None
            if t_prev > 0:
                noise = draw_noise(x.shape, generator, x.device, x.dtype)
            new_x, x0 = sched.ddpm_step(x, t, eps, noise=noise, clip_x0=clip_x0)
        else:
            noise = None
            if eta > 0 and t_prev > 0:
                noise = draw_noise(x.shape, generator, x.device, x.dtype)
            new_x, x0 = sched.ddim_step(x, t, t_prev, eps, eta=eta, noise=noise, clip_x0=clip_x0)
        if levels is not None:
            new_x = torch.where(levels >= t, new_x, x)
        x = new_x
        if on_step is not None:
            on_step(t_prev, x, x0)
    return x


@torch.no_grad()
def repaint(
    purifier: Callable[[Tensor, Tensor], Tensor],
    x0_known: Tensor,
    known: Tensor,
    t_start: int,
    *,
    schedule: NoiseSchedule | None = None,
    mode: Literal["ddpm", "ddim"] = "ddim",
    stride: int = 1,
    eta: float = 0.0,
    resample: int = 1,
    x_start: Tensor | None = None,
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RePaint-style inpainting (Lugmayr et al. 2022) with a uniformly trained purifier.

    The whole image runs through the reverse process from ``t_start``; after every step the **known** pixels
    (``known`` True, ``(B, 1|C, H, W)``) are replaced by ``x0_known`` re-noised to the level just reached
    (``q_sample(x0_known, t_prev, fresh noise)``; level 0: ``x0_known`` itself), so the network always sees an
    image at one consistent level. ``resample = U > 1`` repeats every step U times, jumping back from ``t_prev``
    to ``t`` with fresh forward noise between repeats (RePaint's resampling with jump length 1), at U times the
    network calls. ``x_start`` is the image at ``t_start`` (default: ``x0_known`` noised to ``t_start``).
    Returns the image at level 0 (known pixels exactly ``x0_known``).
    """
    sched = schedule if schedule is not None else getattr(purifier, "schedule", None)
    if sched is None:
        raise ValueError("repaint needs a schedule: pass schedule= or a purifier with a .schedule")
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if not 1 <= t_start <= sched.T:
        raise ValueError(f"t_start {t_start} outside [1, {sched.T}]")
    if known.ndim != 4 or known.shape[0] != x0_known.shape[0] or known.shape[-2:] != x0_known.shape[-2:]:
        raise ValueError(f"known must have shape (B, 1|C, H, W) matching x0_known, got {tuple(known.shape)}")
    known = known.to(x0_known.device).bool()

    def randn() -> Tensor:
        return torch.randn(x0_known.shape, generator=generator, device=x0_known.device, dtype=x0_known.dtype)

    x = x_start if x_start is not None else sched.q_sample(x0_known, t_start, randn())
    batch = x.shape[0]
    visited = step_levels(t_start, mode, stride)
    for i, t in enumerate(visited):
        t_prev = visited[i + 1] if i + 1 < len(visited) else 0
        t_batch = torch.full((batch,), t, dtype=torch.long, device=x.device)
        for u in range(resample):
            eps = purifier(x, t_batch).to(x.dtype)
            if mode == "ddpm":
                step_noise = randn() if t_prev > 0 else None
                unknown, _ = sched.ddpm_step(x, t, eps, noise=step_noise, clip_x0=clip_x0)
            else:
                step_noise = randn() if eta > 0 and t_prev > 0 else None
                unknown, _ = sched.ddim_step(x, t, t_prev, eps, eta=eta, noise=step_noise, clip_x0=clip_x0)
            known_prev = sched.q_sample(x0_known, t_prev, randn()) if t_prev > 0 else x0_known
            x = torch.where(known, known_prev, unknown)
            if u < resample - 1:  # jump back t_prev -> t: q(x_t | x_t_prev)
                ratio = float(sched.abar[t] / sched.abar[t_prev])
                x = ratio ** 0.5 * x + (1 - ratio) ** 0.5 * randn()
    return x
