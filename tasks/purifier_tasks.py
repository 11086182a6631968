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
    """``{"path", "origin"}`` of the purifier folder to use (a diffusers folder with safetensors weights): the
    configured one, the one shipped for the data's image size, else a small one trained at that size."""
    from detoxops.config import DiffusionConfig
    from detoxops.data import load_version
    from detoxops.diffusion import purifier_folder, train_purifier

    cfg = DiffusionConfig(**diffusion_cfg)
    train = load_version(version)["train"]
    size = int(train.image_shape[0])  # the data's size decides, not diffusion.unet.sample_size (issue #24)
    folder, origin = purifier_folder(cfg.purifier, size)
    if folder is not None:
        return {"path": str(folder), "origin": origin}
    out = Path(out_root) / f"tiny-{Path(version).name}"
    cfg = cfg.model_copy(update={"unet": cfg.unet.model_copy(update={"sample_size": size})})
    from tasks.progress import task_progress

    with task_progress("purifier"):
        train_purifier(train.images, cfg, out, progress=False)
    return {"path": str(out), "origin": "trained"}
