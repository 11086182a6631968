"""A purifier = an ε-prediction network + the noise schedule it was trained with."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from detoxops.devices import bf16_inference
from detoxops.diffusion.schedule import NoiseSchedule

__all__ = ["Purifier", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What the network outputs (diffusers' ``prediction_type``): the noise ε, the clean image x_0 (``sample``) or
v = √ᾱ ε − √(1-ᾱ) x_0. :class:`Purifier` always returns ε̂, so samplers and defenses never see the difference."""


class Purifier:
    """Callable ``purifier(x_t, levels) -> ε̂`` around a diffusers ``UNet2DModel``.

    ``levels`` are the papers' noise levels (1..T); diffusers' networks are conditioned on
    ``timestep = level - 1``, which this wrapper passes. ``precision`` (``diffusion.precision``,
    :func:`detoxops.devices.bf16_inference`): ``auto`` runs the call under bf16 autocast on CUDA, ``native`` also on
    CPUs with native bf16; the output is returned in the input's dtype.

    ``cpu_chunk``: off CUDA the network sees at most this many images per forward pass. A CPU is cache-bound:
    on the 2-core EPYC the 1M-parameter CIFAR UNet runs 253 image-passes/s at batch 16, 224 at 64 and 136 at 256
    (benchmarks/results/diffusion_throughput_cpu.json); a batch of 256 handed to this wrapper ran 122 passes/s
    whole and 206 in chunks of 64, while the 16×16 digits UNet ran 937 whole and 1112 in chunks of 64 (2026-12-01,
    other jobs paused). So large defense batches are cut up here rather than asking every caller for a
    device-dependent batch size. ``None`` = the whole batch at once.
    """

    def __init__(
        self, unet: nn.Module, schedule: NoiseSchedule, *, precision: str = "auto", cpu_chunk: int | None = 64,
        prediction_type: str = "epsilon",
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        self.unet = unet.eval()
        self.schedule = schedule
        self.prediction_type = prediction_type
        bf16_inference(precision, torch.device("cpu"))  # an unknown name fails here, not at the first call
        self.precision = precision
        if cpu_chunk is not None and int(cpu_chunk) < 1:
            raise ValueError(f"cpu_chunk must be >= 1 or None, got {cpu_chunk}")
        self.cpu_chunk = cpu_chunk
        self.source_dir: Path | None = None
        """The folder the weights were loaded from (:func:`load_purifier`), where files that belong to them
        live (the patch repair's ``patch_calibration.json``); ``None`` for a purifier built in memory."""

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Purifier:
        # only the arguments given: diffusers warns about any dtype= keyword, even None
        if device is not None:
            self.unet.to(device)
        if dtype is not None and dtype != self.dtype:
            self.unet.to(dtype)
        if device is not None and torch.device(device).type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
        return self

    def uses_bf16(self, device: torch.device) -> bool:
        """Whether a call on ``device`` runs under bf16 autocast."""
        return bf16_inference(self.precision, device)

    @torch.no_grad()
    def __call__(self, x_t: Tensor, levels: Tensor) -> Tensor:
        if x_t.shape[-1] != self.image_size or x_t.shape[1] != self.in_channels:
            raise ValueError(
                f"purifier expects (B, {self.in_channels}, {self.image_size}, {self.image_size}) inputs, "
                f"got {tuple(x_t.shape)}"
            )
        timesteps = (levels.to(x_t.device).long() - 1).clamp_min(0)
        use_amp = self.uses_bf16(x_t.device)
        chunk = self.cpu_chunk if x_t.device.type != "cuda" else None
        if chunk is None or len(x_t) <= chunk:
            return self._forward(x_t, timesteps, use_amp)
        timesteps = timesteps.expand(len(x_t)) if timesteps.ndim == 0 else timesteps
        return torch.cat([self._forward(x, t, use_amp)
                          for x, t in zip(x_t.split(chunk), timesteps.split(chunk), strict=True)])

    def _forward(self, x_t: Tensor, timesteps: Tensor, use_amp: bool) -> Tensor:
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.unet(x_t.to(self.dtype), timesteps).sample
        return self.output_to_eps(x_t, timesteps + 1, out.to(x_t.dtype))

    def output_to_eps(self, x_t: Tensor, levels: Tensor, out: Tensor) -> Tensor:
        """The network's output as ε̂ (identity for ``epsilon``), in float64 coefficients at ``levels`` (>= 1)."""
        if self.prediction_type == "epsilon":
            return out
        ab = self.schedule.abar.to(x_t.device)[levels.long().clamp(1, self.schedule.T)]
        ab = ab.reshape(-1, *([1] * (x_t.ndim - 1))) if ab.ndim else ab
        sqrt_ab, sqrt_1m = ab.sqrt().to(x_t.dtype), (1 - ab).sqrt().to(x_t.dtype)
        if self.prediction_type == "sample":  # ε = (x_t - √ᾱ x̂_0) / √(1-ᾱ)
            return (x_t - sqrt_ab * out) / sqrt_1m
        return sqrt_ab * out + sqrt_1m * x_t  # v: ε = √ᾱ v + √(1-ᾱ) x_t
