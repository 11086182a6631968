"""The ablation variants of SampDetox's table 2, behind the same interface.

* ``Stage1Only`` -- lines 1-6 of Algorithm 1 only: noise globally to t1, denoise. No trigger map.
* ``NoiseOnly`` ("Noise*") -- Algorithm 1 with every denoising step removed: the input is noised to t1
  (equation 2), the configured localiser compares it with that *noisy* "restoration", and the per-pixel stage-2
  noise is added on top; the noisy result is returned (clipped to [0, 1]). It shows what the noise alone does
  to triggers and to accuracy; it needs only the noise schedule, never the UNet.
"""

from __future__ import annotations

import torch

from detoxops.config import SampDetoxConfig
from detoxops.defenses.sampdetox import SampDetox, SampDetoxOutput, _to01

__all__ = ["Stage1Only", "NoiseOnly"]


class Stage1Only(SampDetox):
    """Global detoxification only (table 2, "Stage 1")."""

    def __init__(self, purifier, cfg: SampDetoxConfig | None = None) -> None:
        super().__init__(purifier, cfg)
        self.name = f"stage1[t1={self.cfg.t1}/{self.cfg.sampler}]"

    def _detox(self, x01: torch.Tensor, g: torch.Generator) -> SampDetoxOutput:
        x0 = x01 * 2 - 1
        stage1 = self.restore(x0, self.cfg.t1, g)
        zeros = torch.zeros_like(x0[:, :1])
        return SampDetoxOutput(
            images=_to01(stage1),
            maps={},
            trigger_map=zeros,
            noise_levels=zeros.to(torch.int64),
            stage1=_to01(stage1),
        )


class NoiseOnly(SampDetox):
    """SampDetox without denoising (table 2, "Noise*"); ``purifier`` only has to carry ``.schedule``."""

    def __init__(self, purifier, cfg: SampDetoxConfig | None = None) -> None:
        super().__init__(purifier, cfg)
        self.name = f"noise*[{self.cfg.profile}]"

    def _placement(self, x01: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        """No network runs, so the batch stays where it is, in float32."""
        return x01.device, torch.float32

    def restore(self, x: torch.Tensor, t: int, g: torch.Generator) -> torch.Tensor:
        """Equation 2 only: the noisy sample at level t, not denoised."""
        if t <= 0:
            return x
        return self.schedule.q_sample(x, int(t), self._noise_like(x, g))

    def local_detox(self, base: torch.Tensor, levels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Line 10 only: per-pixel noise, no denoising."""
        return self.noise_per_pixel(base, levels, g)
