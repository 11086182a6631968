"""Artifact files of the conventions (``samples/samples.npz``, ``samples/grid.png``, confusion matrices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_samples", "image_grid", "write_confusion"]


def image_grid(columns: list[np.ndarray]) -> np.ndarray:
    """Rows = samples, columns = the given uint8 (N, H, W, 3) stacks (trigger maps (N, H, W) in [0, 1] are
    shown grey); 1-px white separators."""
    rows = []
    for cols in zip(*columns, strict=True):
        tiles = []
        for tile in cols:
            if tile.ndim == 2:
                tile = np.repeat((np.clip(tile, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
            tiles.append(np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=255))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_samples(folder: Path, clean, poisoned, detoxified, trigger_map, labels, pred_poisoned, pred_detoxified) -> list[Path]:
    """``samples.npz`` + ``grid.png`` (clean | poisoned | trigger map | detoxified) as the dashboard reads them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / "samples.npz"
    np.savez_compressed(
        npz,
        clean=clean, poisoned=poisoned, detoxified=detoxified, trigger_map=trigger_map.astype(np.float32),
        labels=labels, pred_poisoned=pred_poisoned, pred_detoxified=pred_detoxified,
    )
    grid = image_grid([clean, poisoned, trigger_map, detoxified])
    scale = max(1, 128 // clean.shape[1])
    png = folder / "grid.png"
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(png)
    return [npz, png]


def write_confusion(path: Path, true: np.ndarray, pred: np.ndarray, num_classes: int, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (true, pred), 1)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path
