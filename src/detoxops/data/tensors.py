"""uint8 NHWC images ↔ classifier tensors (float32 NCHW in [0, 1]).

``from_tensor`` **rounds** (``(x * 255).round()``) rather than truncating: it is the inverse of ``to_tensor``
(``from_tensor(to_tensor(u)) == u`` exactly, which truncation breaks whenever ``u / 255 * 255`` lands just below
an integer in float32), and it is the unbiased quantisation of diffusion outputs. Attack trigger code keeps
BackdoorBench's truncation (``detoxops.attacks.base.truncate_to_uint8``); pass ``rounding="truncate"`` to
reproduce it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: the data layer (and `detoxops data info`) stays light
    import torch

__all__ = ["to_tensor", "from_tensor"]


def to_tensor(images_u8: np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 ``(N, H, W, C)`` → ``torch.float32`` ``(N, C, H, W)`` in ``[0, 1]``."""
    import torch

    arr = np.asarray(images_u8)
    if arr.dtype != np.uint8:
        raise ValueError(f"to_tensor expects uint8 images, got {arr.dtype}")
    if arr.ndim != 4:
        raise ValueError(f"to_tensor expects (N, H, W, C) images, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    if (
        not arr.flags.writeable
    ):  # a memory-mapped ImageSet: torch warns on read-only buffers, so copy the uint8s
        arr = arr.copy()
    x = torch.from_numpy(arr).to(device=device)
    return x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()


def from_tensor(x: torch.Tensor, rounding: Literal["round", "truncate"] = "round") -> np.ndarray:
    """float ``(N, C, H, W)`` in ``[0, 1]`` → uint8 ``(N, H, W, C)`` (clipped; rounded by default).

    NaN or infinite values are an error rather than being silently clipped.
    """
    import torch

    if rounding not in ("round", "truncate"):
        raise ValueError(f"from_tensor: rounding must be 'round' or 'truncate', got {rounding!r}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"from_tensor expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"from_tensor expects (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"from_tensor expects a float tensor in [0, 1], got {x.dtype}")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("from_tensor: tensor contains NaN or inf values")
    scaled = x.mul(255.0)
    scaled = scaled.round() if rounding == "round" else scaled.trunc()
    return scaled.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
