"""The diffusion core: noise schedules (closed forms), samplers, purifier networks and their training.

Split as in diffusers: ``schedule`` is pure tensor math, ``samplers`` run the reverse process, ``unet`` /
``purifier`` hold networks, ``train`` fits them. SampDetox and DataElixir are compositions of these.
"""

from detoxops.diffusion.purifier import Purifier
from detoxops.diffusion.samplers import denoise, snap_levels, step_levels
from detoxops.diffusion.schedule import NoiseSchedule
from detoxops.diffusion.train import evaluate_denoising, train_purifier
from detoxops.diffusion.unet import (
    build_unet,
    count_params,
    default_purifier,
    load_purifier,
    purifier_folder,
    save_purifier,
)

__all__ = [
    "NoiseSchedule",
    "Purifier",
    "denoise",
    "step_levels",
    "snap_levels",
    "build_unet",
    "count_params",
    "load_purifier",
    "save_purifier",
    "default_purifier",
    "purifier_folder",
    "train_purifier",
    "evaluate_denoising",
]
