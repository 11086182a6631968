"""Noise schedules and the closed forms of DDPM / DDIM (pure tensor math, no networks).

Levels: we index noise by the *level* ``t`` in ``0..T`` as the papers do (Ho et al. 2020; SampDetox's
Algorithm 1 runs ``t = t1 … 1``). Level 0 is the clean image; level ``t ≥ 1`` has ``ᾱ_t = ∏_{s≤t} α_s``.
diffusers indexes the same quantities by ``timestep = t - 1`` (``alphas_cumprod[t - 1]``); :class:`Purifier`
does that translation when it calls a ``UNet2DModel``. Every ``t`` argument below may be an ``int``, a
per-sample ``(B,)`` tensor, or a per-pixel ``(B, 1, H, W)`` / ``(B, C, H, W)`` tensor of levels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from detoxops.config import ScheduleConfig

__all__ = ["NoiseSchedule"]


class NoiseSchedule:
    """β schedule with ᾱ lookups and the forward / reverse closed forms."""

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D sequence (length ≥ 2) of values in (0, 1)")
        self.betas = betas
        # abar[t] for levels 0..T; abar[0] = 1 (clean). Float64 source avoids drift in long products.
        self.abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])
        # betas / alphas padded so that index t is level t (index 0 unused: no step into level 0 … from -1).
        self.beta = torch.cat([torch.zeros(1, dtype=torch.float64), betas])

    # ------------------------------------------------------------------ construction
    @property
    def T(self) -> int:  # noqa: N802 - the papers' name
        return self.betas.numel()

    @property
    def num_train_timesteps(self) -> int:
        """diffusers' name for :attr:`T`."""
        return self.T

    @property
    def alphas_cumprod(self) -> Tensor:
        """diffusers' ``alphas_cumprod`` (index = diffusers timestep = level - 1)."""
        return self.abar[1:]

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:  # noqa: N803
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:  # noqa: N803
        """Nichol & Dhariwal's cosine schedule (diffusers' ``squaredcos_cap_v2``)."""

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    @classmethod
    def from_config(cls, cfg: ScheduleConfig) -> NoiseSchedule:
        if cfg.kind == "linear":
            if cfg.beta_end <= cfg.beta_start:
                raise ValueError("diffusion.schedule: beta_end must exceed beta_start")
            return cls.linear(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        return cls.cosine(cfg.num_train_timesteps)

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        """Build from a diffusers ``scheduler_config.json`` (DDPM/DDIM schedulers)."""
        T = int(config.get("num_train_timesteps", 1000))  # noqa: N806
        kind = config.get("beta_schedule", "linear")
        if config.get("trained_betas") is not None:
            return cls(torch.tensor(config["trained_betas"], dtype=torch.float64))
        b0, b1 = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        if kind == "linear":
            return cls.linear(T, b0, b1)
        if kind == "scaled_linear":
            return cls(torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2)
        if kind == "squaredcos_cap_v2":
            return cls.cosine(T)
        raise ValueError(f"scheduler config: unsupported beta_schedule {kind!r}")

    def to_diffusers_config(self) -> dict[str, Any]:
        return {
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": self.T,
            "beta_schedule": "linear",
            "trained_betas": self.betas.tolist(),
            "prediction_type": "epsilon",
            "clip_sample": True,
            "variance_type": "fixed_small",
        }

    # ------------------------------------------------------------------ lookups
    def _lookup(self, table: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
        """``table[t]`` in float64, shaped to broadcast against ``like`` (scalar, per-sample or per-pixel t).

        Coefficients are combined in float64 and cast to the images' dtype only when applied: at low levels
        ``1 - ᾱ_t`` is ~1e-4 and float32 tables (as diffusers keeps them) lose ~1e-3 relative accuracy there.
        """
        if isinstance(t, int):
            if not 0 <= t <= self.T:
                raise ValueError(f"noise level {t} outside [0, {self.T}]")
            return table[t].to(device=like.device) if like.device.type != "mps" else table[t]
        t = torch.as_tensor(t, device=like.device).long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > self.T):
            raise ValueError(f"noise levels must lie in [0, {self.T}], got [{int(t.min())}, {int(t.max())}]")
        vals = table.to(device=like.device)[t]
        if vals.ndim == 1 and like.ndim > 1:  # per-sample → (B, 1, 1, 1)
            vals = vals.view(-1, *([1] * (like.ndim - 1)))
        return vals

    def abar_at(self, t: int | Tensor, like: Tensor) -> Tensor:
        """ᾱ_t in ``like``'s dtype, broadcastable against it."""
        return self._lookup(self.abar, t, like).to(like.dtype)

    # ------------------------------------------------------------------ closed forms
    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """Forward noising q(x_t | x_0) = √ᾱ_t x_0 + √(1-ᾱ_t) ε (level 0 returns x_0 unchanged)."""
        ab = self._lookup(self.abar, t, x0)
        return _c(ab.sqrt(), x0) * x0 + _c((1 - ab).sqrt(), x0) * noise

    def predict_x0(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t."""
        ab = self._lookup(self.abar, t, x_t)
        return _c(ab.rsqrt(), x_t) * x_t - _c(((1 - ab) / ab).sqrt(), x_t) * eps

    def predict_eps(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        """ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t) (levels ≥ 1)."""
        ab = self._lookup(self.abar, t, x_t)
        return _c((1 - ab).rsqrt(), x_t) * x_t - _c((ab / (1 - ab)).sqrt(), x_t) * x0

    def ddpm_step(
        self, x_t: Tensor, t: int | Tensor, eps: Tensor, noise: Tensor | None = None, clip_x0: bool = True
    ) -> tuple[Tensor, Tensor]:
        """One ancestral step level t → t-1 (t ≥ 1): the posterior q(x_{t-1} | x_t, x̂_0), σ² = β̃_t.

        mean = (√ᾱ_{t-1} β_t x̂_0 + √α_t (1-ᾱ_{t-1}) x_t) / (1-ᾱ_t), variance β̃_t = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t).
        Equals diffusers' ``DDPMScheduler.step`` (``variance_type="fixed_small"``, epsilon prediction,
        ``clip_sample=clip_x0``) at ``timestep = t - 1`` with ``variance_noise = noise``. Returns
        (x_{t-1}, x̂_0). Pass ``noise=None`` on the step into level 0 (Algorithm 1: z = 0 when t = 1).
        """
        ab_t = self._lookup(self.abar, t, x_t)
        ab_prev = self._lookup(self.abar, t - 1, x_t)
        beta_t = self._lookup(self.beta, t, x_t)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        coef_x0 = ab_prev.sqrt() * beta_t / (1 - ab_t)
        coef_xt = (1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t)
        mean = _c(coef_x0, x_t) * x0 + _c(coef_xt, x_t) * x_t
        if noise is not None:
            var = (1 - ab_prev) / (1 - ab_t) * beta_t
            mean = mean + _c(var.clamp_min(1e-20).sqrt() * (ab_prev < 1), x_t) * noise
        return mean, x0

    def ddim_step(
        self,
        x_t: Tensor,
        t: int | Tensor,
        t_prev: int | Tensor,
        eps: Tensor,
        eta: float = 0.0,
        noise: Tensor | None = None,
        clip_x0: bool = True,
        use_clipped_eps: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """DDIM step level t → t_prev (any stride). eta = 0 is deterministic; eta = 1 matches DDPM's variance.

        x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε + σ z, σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev).
        Equals diffusers' ``DDIMScheduler.step`` (``set_alpha_to_one=True``, same ``use_clipped_model_output``,
        ``variance_noise = noise``) at ``timestep = t - 1`` with step ratio ``t - t_prev``. Returns
        (x_{t_prev}, x̂_0).
        """
        ab_t = self._lookup(self.abar, t, x_t)
        ab_prev = self._lookup(self.abar, t_prev, x_t)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            if use_clipped_eps:  # re-derive ε from the clipped x̂_0 (diffusers' use_clipped_model_output)
                eps = self.predict_eps(x_t, t, x0)
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).clamp_min(0).sqrt()
        direction = (1 - ab_prev - sigma**2).clamp_min(0).sqrt()
        x_prev = _c(ab_prev.sqrt(), x_t) * x0 + _c(direction, x_t) * eps
        if eta > 0 and noise is not None:
            x_prev = x_prev + _c(sigma, x_t) * noise
        return x_prev, x0


def _c(coef: Tensor, like: Tensor) -> Tensor:
    """A float64 coefficient cast to the images' dtype and device."""
    return coef.to(device=like.device, dtype=like.dtype)
