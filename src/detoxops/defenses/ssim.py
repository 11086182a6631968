"""SSIM is a shared utility (attacks' visibility, DataElixir's distance, SampDetox's localisers use it): it lives in
:mod:`detoxops.ssim`; this module re-exports it for the defenses' existing imports."""

from detoxops.ssim import GAUSSIAN_WINDOW, ssim, ssim_map, uniform_filter

__all__ = ["GAUSSIAN_WINDOW", "ssim", "ssim_map", "uniform_filter"]
