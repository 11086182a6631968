"""Which torch device a run uses: the one rule (``auto`` = CUDA when present, else CPU), and whether it trains in
bf16 autocast."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "bf16_autocast", "bf16_inference", "INFERENCE_PRECISIONS"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` / ``None`` → ``cuda`` when available, else ``cpu``; anything else as torch reads it."""
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def bf16_autocast(precision: str, device: torch.device) -> bool:
    """Whether training runs its forward pass in bf16 autocast: ``bf16`` / ``fp32`` as asked; ``auto`` = on CUDA,
    and on CPUs with native bf16 (oneDNN's check: AVX512-BF16 / AMX), where it is 1.5-2x fp32's speed on this
    project's machine; emulated bf16 is slower than fp32, so other CPUs stay fp32. Used by the purifier's training
    and by ``detoxops.models.fast_train``."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


INFERENCE_PRECISIONS = ("auto", "native", "bf16", "fp32")


def bf16_inference(precision: str, device: torch.device) -> bool:
    """Whether a purifier's forward pass runs in bf16 autocast (``diffusion.precision``): ``auto`` = on CUDA only
    (every CPU number detoxops reports was measured in fp32, so the CPU default keeps them); ``native`` = on CUDA
    and on CPUs with native bf16 (:func:`bf16_autocast`'s ``auto``: 1.6x fp32's speed for the digits UNet here,
    results within bf16's rounding, docs/diffusion.md); ``bf16`` / ``fp32`` everywhere."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"diffusion.precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return device.type == "cuda"
    if precision == "native":
        return bf16_autocast("auto", device)
    return precision == "bf16"
