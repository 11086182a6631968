"""detoxops.defenses — inference-time defenses (SampDetox, its ablations, transformation baselines), the
black-box guard, trigger localisers and their evaluation. DataElixir (training-time) lives in ``dataelixir``.

Every defense is a callable ``defense(x01) -> DefenseOutput`` on float32 NCHW batches in [0, 1].
"""

from detoxops.defenses.base import Defense, DefenseOutput, NoDefense
from detoxops.ssim import ssim, ssim_map

__all__ = ["Defense", "DefenseOutput", "NoDefense", "ssim", "ssim_map"]
