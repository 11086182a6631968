"""``ingest``: load a source, validate it, and store it as a content-addressed dataset version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from detoxops.data.sources import CACHE_DIR, load_source, resolve_image_size, source_name
from detoxops.data.store import save_version

if TYPE_CHECKING:
    from detoxops.config import DataConfig

__all__ = ["ingest"]


def ingest(
    source: str | Path,
    root: str | Path | None = None,
    cfg: DataConfig | None = None,
    *,
    name: str | None = None,
    progress: bool = True,
    cache: bool = True,
    at: str | Path | None = None,
    overwrite: bool = False,
    split: str | None = None,
) -> Path:
    """Store ``source`` under ``<root>/<name>/<hash12>/`` and return the version folder.

    Everything is decoded and validated in memory first, so a bad source raises before anything is
    written; the version is written to a temp folder and renamed into place. Ingesting the same content again
    returns the existing folder without touching it. ``root`` defaults to ``cfg.root``; ``name`` to the
    source's name (``digits``, the archive stem, …); ``cache`` as in :func:`load_source`, kept in ``<root>/.cache``.
    ``at`` / ``overwrite``: store the version in exactly that folder (see :func:`save_version`). ``split``: store
    the source whole, no train / test split imposed (see :func:`load_source`; ``--split`` / ``--no-split``).
    """
    from detoxops.config import DataConfig

    cfg, _ = resolve_image_size(source, cfg or DataConfig())  # the version records the size it was stored at
    root = Path(root if root is not None else cfg.root)
    splits = load_source(source, cfg, progress=progress, cache=cache, cache_root=root / CACHE_DIR, split=split)
    settings = cfg.model_dump(mode="json")
    settings.pop("root", None)
    settings.pop("source", None)
    settings.pop("limits", None)  # safeguards, not part of what the version is
    if split is not None:
        settings["split"] = split
    return save_version(
        splits,
        root,
        name or source_name(source),
        source=str(source),
        extra={"config": settings},
        at=at,
        overwrite=overwrite,
    )
