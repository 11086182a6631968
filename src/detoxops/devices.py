"""Which torch device a run uses: the one rule (``auto`` = CUDA when present, else CPU)."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` / ``None`` → ``cuda`` when available, else ``cpu``; anything else as torch reads it."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)
