"""Which purifier an operation uses: the one rule every entry point follows."""

from __future__ import annotations

import json
from pathlib import Path

from detoxops.config import DiffusionConfig

__all__ = ["choose_purifier", "load_chosen_purifier"]


def choose_purifier(explicit: str | Path | None, cfg: DiffusionConfig, image_size: int) -> tuple[Path, str]:
    """``(folder, origin)``: ``explicit`` (a ``--purifier`` folder, a pipeline's ``pipeline/purifier``) when given,
    else ``diffusion.purifier`` (a folder or a shipped name), else the purifier shipped for ``image_size``
    (:func:`detoxops.diffusion.purifier_folder`). Raises ``FileNotFoundError`` naming the setting when none exists
    (training one is its own operation: ``detoxops diffusion train``, the ``train_purifier`` stage) and
    ``ValueError`` when the purifier's image size is not the data's."""
    from detoxops.diffusion import purifier_folder

    if explicit is not None:
        folder, origin = Path(explicit), "explicit"
        if not folder.is_dir():
            raise FileNotFoundError(f"purifier {folder} is not a folder")
    else:
        folder, origin = purifier_folder(cfg.purifier, image_size)
        if folder is None:
            raise FileNotFoundError(
                f"no purifier for {image_size}x{image_size} images: set diffusion.purifier or pass --purifier "
                "(train one with `detoxops diffusion train`)")
    config = Path(folder) / "config.json"
    size = json.loads(config.read_text()).get("sample_size") if config.is_file() else None
    if size is not None and int(size) != int(image_size):
        raise ValueError(f"purifier {folder} was trained on {size}x{size} images but the data are "
                         f"{image_size}x{image_size}")
    return Path(folder), origin


def load_chosen_purifier(explicit: str | Path | None, cfg: DiffusionConfig, image_size: int, device="cpu"):
    """The :class:`~detoxops.diffusion.Purifier` of :func:`choose_purifier`, on ``device``."""
    from detoxops.diffusion import load_purifier

    folder, _ = choose_purifier(explicit, cfg, image_size)
    return load_purifier(folder, device=device)
