"""A few images per class read straight from a ``<split>/<class>/<file>`` tar archive, in archive order, without
decoding the rest of it — for quick looks, tests and small measurements (``load_source`` decodes and caches a whole
archive)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_per_class(
    archive: str | Path, split: str, per_class: int, classes: tuple[str, ...] = CIFAR10_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of each class of ``split``, sorted by class (label = index in ``classes``):
    uint8 (N, H, W, 3) and int64 labels. Only regular files at ``<split>/<class>/<file>`` are read."""
    from PIL import Image

    taken = dict.fromkeys(classes, 0)
    images, labels = [], []
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != split or parts[1] not in taken:
                continue
            if taken[parts[1]] >= per_class:
                continue
            data = tf.extractfile(member).read()
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8))
            labels.append(classes.index(parts[1]))
            taken[parts[1]] += 1
            if all(v >= per_class for v in taken.values()):
                break
    if not images:
        raise FileNotFoundError(f"no {split} images found in {archive}")
    order = np.lexsort((np.arange(len(labels)), labels))
    return np.stack(images)[order], np.asarray(labels, dtype=np.int64)[order]
