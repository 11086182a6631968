"""A purifier for spatially varying noise: the UNet also sees the per-pixel level map.

Why: SampDetox's stage 2 (and any inpainting) hands the network images whose pixels sit at *different* noise
levels — a hole at full noise next to clean context, or a continuous map ``m[i] ≤ t2``. A uniformly trained
ε-network is called with one timestep per image and so treats the clean context as if it were as noisy as the
noisiest pixel. :class:`LevelMapPurifier` adds one input channel holding every pixel's noise standard deviation
``σ_i = sqrt(1 - ᾱ_{m[i]})`` and gives the timestep embedding the map's maximum.

Design choices (docs/diffusion.md, "Level-map purifier"):

* **Extra channel = σ of the pixel's level**, not ``t / T``: σ is what the pixel's noise actually is (0 for a
  clean pixel, 1 at full noise) and it spreads the levels the defenses use (t = 20 / 120 / 300 → 0.08 / 0.37 /
  0.66) where ``t / T`` crowds them into [0.02, 0.3].
* **Timestep embedding = the map's maximum per image**: that is the level :func:`detoxops.diffusion.denoise`
  steps at (its per-step ``t`` is the maximum of the current map of every image it updates), so with the new
  channel's input weights at zero the network is *exactly* the uniform network it was started from, called
  exactly as today's per-pixel sampler calls it (:func:`levelmap_from_uniform`, tested). Fine-tuning therefore
  starts from the baseline it must beat.
* **Sampling** goes through ``denoise(..., t_map=...)`` unchanged: ``denoise`` passes the current map
  ``min(t_map, t)`` (pixels already started sit at the step's level, the others at their own) to any purifier
  with ``accepts_level_map``; without ``t_map`` the map is the uniform level, so a uniform map gives the uniform
  path's output (tested).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's usual alias
from diffusers import UNet2DModel
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from detoxops.diffusion.purifier import Purifier
from detoxops.diffusion.schedule import NoiseSchedule

__all__ = [
    "LevelMapPurifier",
    "LevelMapTrainConfig",
    "LEVEL_MAP_FILE",
    "levelmap_from_uniform",
    "random_level_maps",
    "train_levelmap_purifier",
]

LEVEL_MAP_FILE = "level_map.json"
"""Marker file of a level-map purifier folder (next to ``config.json``): the input encoding it was trained with."""
LEVEL_MAP_ENCODING = {"kind": "level-map", "extra_channel": "sigma", "timestep": "max",
                      "doc": "input = cat(x_t, sqrt(1 - abar[level_map])); timestep = max(level_map) - 1"}


class LevelMapPurifier(Purifier):
    """``purifier(x_t, levels, level_map=None) -> ε̂`` for a UNet with ``in_channels = image channels + 1``.

    ``level_map``: ``(B, 1|C, H, W)`` (or ``(B, 1, 1, 1)``) integer levels of every pixel of ``x_t``; a
    ``(B, C, H, W)`` map is reduced to its maximum over channels. ``None`` = every pixel at ``levels`` (the
    uniform case). The timestep given to the UNet is each image's map maximum (minus one, diffusers' index).
    """

    accepts_level_map = True

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, **kwargs: Any) -> None:
        cfg = unet.config
        if int(cfg.in_channels) != int(cfg.out_channels) + 1:
            raise ValueError(
                f"a level-map UNet needs in_channels = out_channels + 1, got {cfg.in_channels} / {cfg.out_channels}"
            )
        if kwargs.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError("a level-map purifier predicts ε (prediction_type epsilon), got "
                             f"{kwargs['prediction_type']!r}")
        super().__init__(unet, schedule, **kwargs)
        self._sigma = (1.0 - schedule.abar).clamp_min(0).sqrt().float()  # σ per level 0..T

    @property
    def in_channels(self) -> int:
        """Image channels (the extra map channel is internal)."""
        return int(self.unet.config.out_channels)

    def sigma_map(self, level_map: Tensor) -> Tensor:
        """The extra input channel: ``sqrt(1 - ᾱ)`` of every pixel's level, ``(B, 1, H, W)``."""
        return self._sigma.to(level_map.device)[level_map.long().clamp(0, self.schedule.T)]

    @torch.no_grad()
    def __call__(self, x_t: Tensor, levels: Tensor, level_map: Tensor | None = None) -> Tensor:
        if x_t.ndim != 4 or x_t.shape[-1] != self.image_size or x_t.shape[1] != self.in_channels:
            raise ValueError(
                f"purifier expects (B, {self.in_channels}, {self.image_size}, {self.image_size}) inputs, "
                f"got {tuple(x_t.shape)}"
            )
        b, _, h, w = x_t.shape
        if level_map is None:
            level_map = torch.as_tensor(levels, device=x_t.device).long().reshape(-1, 1, 1, 1).expand(b, 1, 1, 1)
        level_map = level_map.to(x_t.device).long()
        if level_map.ndim != 4 or level_map.shape[0] != b:
            raise ValueError(f"level_map must be (B, 1|C, H, W) with B = {b}, got {tuple(level_map.shape)}")
        level_map = level_map.amax(1, keepdim=True).expand(b, 1, h, w)
        use_amp = self.uses_bf16(x_t.device)
        chunk = self.cpu_chunk if x_t.device.type != "cuda" else None
        if chunk is None or b <= chunk:
            return self._forward_map(x_t, level_map, use_amp)
        return torch.cat([self._forward_map(x, m, use_amp)
                          for x, m in zip(x_t.split(chunk), level_map.split(chunk), strict=True)])

    def _forward_map(self, x_t: Tensor, level_map: Tensor, use_amp: bool) -> Tensor:
        timesteps = (level_map.flatten(1).amax(1) - 1).clamp_min(0)
        inp = torch.cat([x_t, self.sigma_map(level_map).to(x_t.dtype)], 1)
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=use_amp):
            eps = self.unet(inp.to(self.dtype), timesteps).sample
        return eps.to(x_t.dtype)


def levelmap_from_uniform(purifier: Purifier) -> LevelMapPurifier:
    """A level-map purifier that computes exactly what ``purifier`` computes: same config and weights, one more
    input channel whose ``conv_in`` weights are zero. The given purifier is not modified."""
    if getattr(purifier, "accepts_level_map", False):
        raise ValueError("the purifier already takes a level map")
    if getattr(purifier, "prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"a level-map purifier is built from an ε-predicting one, got {purifier.prediction_type!r}")
    src = getattr(purifier.unet, "_orig_mod", purifier.unet)
    cfg = dict(src.config)
    chans = int(cfg["in_channels"])
    cfg["in_channels"] = chans + 1
    cfg["out_channels"] = int(cfg.get("out_channels") or chans)
    unet = UNet2DModel.from_config(cfg).to(purifier.device)
    if purifier.dtype != torch.float32:
        unet = unet.to(purifier.dtype)
    state = {k: v.detach().clone() for k, v in src.state_dict().items()}
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros_like(w[:, :1])], 1)
    unet.load_state_dict(state)
    return LevelMapPurifier(unet, purifier.schedule, precision=purifier.precision, cpu_chunk=purifier.cpu_chunk)


# ------------------------------------------------------------------------------------------- training data
def _smooth_field(n: int, size: int, generator: torch.Generator, coarse: int = 4) -> Tensor:
    """Smooth random fields in [0, 1], ``(n, 1, size, size)``: coarse uniform noise, bilinearly upsampled."""
    low = torch.rand(n, 1, coarse, coarse, generator=generator)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def random_level_maps(
    n: int, size: int, T: int, generator: torch.Generator, *,  # noqa: N803 - the papers' name
    p_full_image: float = 0.2, p_patch: float = 0.35, p_blob: float = 0.25, p_full_noise: float = 0.3,
    low_band: int = 300, patch_sides: tuple[int, int] = (2, 8), p_clean_context: float = 0.6,
) -> Tensor:
    """``(n, 1, size, size)`` integer level maps in ``[0, T]``, the training distribution of the level-map purifier.

    Per image one of: the **full image** at one level (the uniform case, probability ``p_full_image``); a
    **square patch** of side ``patch_sides`` (``p_patch``); a **blob** (a smooth random field thresholded at a
    random area of 3–50 %, ``p_blob``); else a **smooth continuous map** ``hi · u`` (``u`` a smooth field in
    [0, 1], as SampDetox's stage-2 maps are). The region's level ``hi`` is ``T`` (full noise: inpainting) with
    probability ``p_full_noise``, else uniform on ``[1, low_band]`` or ``[1, T]`` (half each). Outside the region
    the level is 0 (clean context) for ``p_clean_context`` of the images and a random fraction of ``hi`` for the rest.
    """
    kind = torch.multinomial(torch.tensor([p_full_image, p_patch, p_blob, max(0.0, 1 - p_full_image - p_patch - p_blob)]),
                             n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator)
    hi = torch.where(u < 0.5, torch.randint(1, low_band + 1, (n,), generator=generator),
                     torch.randint(1, T + 1, (n,), generator=generator))
    hi = torch.where(torch.rand(n, generator=generator) < p_full_noise, torch.full_like(hi, T), hi)
    lo_frac = torch.rand(n, generator=generator)
    lo = torch.where(torch.rand(n, generator=generator) < p_clean_context, torch.zeros_like(hi),
                     (lo_frac * hi).long())

    # square patches (vectorised: a box test against per-image corners)
    side = torch.randint(patch_sides[0], patch_sides[1] + 1, (n,), generator=generator)
    top = (torch.rand(n, generator=generator) * (size - side + 1)).long()
    left = (torch.rand(n, generator=generator) * (size - side + 1)).long()
    ar = torch.arange(size)
    rows = (ar.view(1, -1) >= top.view(-1, 1)) & (ar.view(1, -1) < (top + side).view(-1, 1))
    cols = (ar.view(1, -1) >= left.view(-1, 1)) & (ar.view(1, -1) < (left + side).view(-1, 1))
    patch = (rows.view(n, size, 1) & cols.view(n, 1, size)).view(n, 1, size, size)
    # blobs: smooth field above its per-image quantile
    field = _smooth_field(n, size, generator)
    area = 0.03 + 0.47 * torch.rand(n, generator=generator)
    ranked = field.flatten(1).sort(1).values
    cut = ((1 - area) * (size * size - 1)).long().view(-1, 1)
    blob = field > ranked.gather(1, cut).view(-1, 1, 1, 1)
    smooth = (_smooth_field(n, size, generator) * hi.view(-1, 1, 1, 1)).round().long()

    hi4, lo4, k = hi.view(-1, 1, 1, 1), lo.view(-1, 1, 1, 1), kind.view(-1, 1, 1, 1)
    region = torch.where(k == 1, patch, blob)
    maps = torch.where(region, hi4, lo4)
    maps = torch.where(k == 0, hi4.expand_as(maps), maps)
    maps = torch.where(k == 3, smooth.clamp_min(lo4), maps)
    return maps.clamp(0, T)


# ------------------------------------------------------------------------------------------------ training
class LevelMapTrainConfig(BaseModel):
    """Fine-tuning a level-map purifier from a uniform one (``benchmarks/train_levelmap.py`` records its use)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=20000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    ema_decay: float = Field(default=0.995, ge=0, lt=1)
    """Shorter than the uniform purifier's 0.999: a fine-tune of a few thousand CPU steps."""
    loss: str = Field(default="image", pattern="^(image|noisy|all)$")
    """``noisy``: ε-MSE over the pixels whose level is > 0 (a clean pixel's ε does not change its restoration,
    x̂0 = x_t at ᾱ = 1); ``image``: the same, averaged per image first, so an image with a 2x2 hole weighs as
    much as a fully noised one (weighted to the noisy region); ``all``: over every pixel."""
    p_full_noise: float = Field(default=0.3, ge=0, le=1)
    """Share of the images whose region is at full noise (level T: inpainting)."""
    p_clean_context: float = Field(default=0.6, ge=0, le=1)
    """Share of the images whose pixels outside the region are clean (level 0)."""
    checkpoint_every: int = Field(default=100, ge=1)
    seed: int = 0


def train_levelmap_purifier(
    images_u8: np.ndarray,
    init: Purifier,
    out_dir: str | Path,
    cfg: LevelMapTrainConfig | None = None,
    *,
    progress: bool = True,
    time_budget_s: float | None = None,
    on_checkpoint: Callable[[int, LevelMapPurifier], None] | None = None,
) -> tuple[LevelMapPurifier, dict[str, Any]]:
    """Fine-tune a level-map purifier, started from the uniform ``init`` (:func:`levelmap_from_uniform`), on uint8
    NHWC images noised per pixel with :func:`random_level_maps`; resumable from ``out_dir/checkpoint``.

    ``out_dir`` is a loadable purifier folder (EMA weights) after every checkpoint; ``history`` records steps, the
    running loss, wall seconds and process CPU seconds, summed over resumed runs.
    """
    from detoxops.diffusion.train import _ema_update, _load_checkpoint, _save_checkpoint, images_to_diffusion
    from detoxops.diffusion.unet import save_purifier
    from detoxops.progress import tqdm

    cfg = cfg or LevelMapTrainConfig()
    out = Path(out_dir)
    ckpt = out / "checkpoint"
    device = init.device
    model = levelmap_from_uniform(init)
    unet = model.unet.train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, Any] = {"loss": [], "step": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                               "config": cfg.model_dump()}
    step = 0
    if (ckpt / "state.json").is_file():
        step, history = _load_checkpoint(ckpt, unet, ema, opt, gen)
        if history.get("config") != cfg.model_dump():
            raise ValueError(f"{ckpt}: written with another config ({history.get('config')}); use another out_dir")
    schedule = init.schedule
    T = schedule.T  # noqa: N806
    abar = schedule.abar.to(device=device, dtype=torch.float32)
    data = images_to_diffusion(images_u8)
    size = data.shape[-1]
    prior_wall, prior_cpu = float(history.get("seconds", 0.0)), float(history.get("cpu_seconds", 0.0))
    wall0, cpu0 = time.time(), time.process_time()
    running = history["loss"][-1][1] if history["loss"] else 0.0
    bar = tqdm(total=cfg.steps, initial=step, desc="train level-map purifier", disable=not progress)
    while step < cfg.steps:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0 = data[idx]
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0).to(device)
        maps = random_level_maps(cfg.batch_size, size, T, gen, p_full_noise=cfg.p_full_noise,
                                 p_clean_context=cfg.p_clean_context).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        ab = abar[maps]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        inp = torch.cat([x_t, model.sigma_map(maps)], 1)
        pred = unet(inp, (maps.flatten(1).amax(1) - 1).clamp_min(0)).sample
        err = (pred.float() - noise).pow(2)
        if cfg.loss == "noisy":
            weight = (maps > 0).float().expand_as(err)
            loss = (err * weight).sum() / weight.sum().clamp_min(1.0)
        elif cfg.loss == "image":
            weight = (maps > 0).float().expand_as(err)
            per_image = (err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1.0)
            loss = per_image.mean()
        else:
            loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        _ema_update(ema, unet, cfg.ema_decay)
        step += 1
        running = loss.item() if running == 0.0 else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        stop = time_budget_s is not None and time.time() - wall0 >= time_budget_s
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
            history["loss"].append([step, running])
            history["step"] = step
            history["seconds"] = prior_wall + time.time() - wall0
            history["cpu_seconds"] = prior_cpu + time.process_time() - cpu0
            _save_checkpoint(ckpt, unet, ema, opt, gen, step, history)
            ema_purifier = LevelMapPurifier(ema, schedule)
            save_purifier(ema_purifier, out)
            (out / "training.json").write_text(json.dumps({k: v for k, v in history.items() if k != "loss"}
                                                          | {"last_loss": running}, indent=1))
            if on_checkpoint is not None:
                on_checkpoint(step, ema_purifier)
        if stop:
            break
    bar.close()
    unet.eval()
    return LevelMapPurifier(ema, schedule), history
