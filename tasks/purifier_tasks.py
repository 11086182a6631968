"""The diffusion purifier: the configured folder, the shipped one for the image size, or a tiny one trained
once (cached) when neither exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["get_purifier"]


@task(name="purifier", cache_policy=HEAVY_CACHE, result_serializer="json")
def get_purifier(diffusion_cfg: dict[str, Any], version: str, out_root: str,
                 dataelixir_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"path", "origin"}`` of the purifier folder to use (a diffusers folder with safetensors weights): the
    configured one, the one shipped for the data's image size, else a small one trained at that size
    (:func:`detoxops.operations.prepare_purifier`, used in place: no copy). With ``dataelixir_cfg`` the purifier
    DataElixir runs with (:func:`detoxops.operations.dataelixir_purifier`: its own setting or its profile's)."""
    from detoxops.config import DataElixirConfig, DiffusionConfig, Params
    from detoxops.data import load_version
    from detoxops.operations import dataelixir_diffusion, prepare_purifier
    from tasks.progress import task_progress

    train = load_version(version)["train"]
    cfg = DiffusionConfig(**diffusion_cfg)
    if dataelixir_cfg is not None:
        cfg = dataelixir_diffusion(Params(diffusion=cfg, dataelixir=DataElixirConfig(**dataelixir_cfg)),
                                   int(train.image_shape[0]))
    with task_progress("purifier"):
        outcome = prepare_purifier(train, cfg, Path(out_root) / f"tiny-{Path(version).name}",
                                   copy=False, source=version, progress=False)
    return {"path": str(outcome.folder), "origin": outcome.origin}
