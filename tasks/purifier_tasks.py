"""The diffusion purifier: the configured folder, the shipped one for the image size, or a tiny one trained
once (cached) when neither exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["get_purifier"]


@task(name="purifier", cache_policy=HEAVY_CACHE, result_serializer="json")
def get_purifier(diffusion_cfg: dict[str, Any], version: str, out_root: str) -> dict[str, Any]:
    """``{"path", "origin"}`` of the purifier folder to use (a diffusers folder with safetensors weights)."""
    from detoxops.config import DiffusionConfig
    from detoxops.data import load_version

    cfg = DiffusionConfig(**diffusion_cfg)
    if cfg.purifier:
        if not Path(cfg.purifier).is_dir():
            raise FileNotFoundError(f"diffusion.purifier: {cfg.purifier} is not a folder")
        return {"path": str(Path(cfg.purifier).resolve()), "origin": "configured"}
    from detoxops.diffusion import unet as unet_mod

    size = int(cfg.unet.sample_size)
    for name, shipped_size in getattr(unet_mod, "SHIPPED_PURIFIERS", {}).items():
        folder = unet_mod.shipped_purifier_dir(name)
        if shipped_size == size and (folder / "config.json").is_file():
            return {"path": str(folder), "origin": f"shipped:{name}"}
    from detoxops.diffusion import train_purifier

    train = load_version(version)["train"]
    out = Path(out_root) / f"tiny-{Path(version).name}"
    train_purifier(train.images, cfg, out, progress=False)
    return {"path": str(out), "origin": "trained"}
