"""A few real CIFAR-10 images per class, read straight from the shared JPEG archive (``<split>/<class>/<file>``)
without decoding the rest: the small-scale attack measurements use it (a copy of the attack tests' reader)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def read_cifar(archive: str | Path, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of each class of ``split`` in archive order, sorted by class:
    uint8 (N, 32, 32, 3) and int64 labels."""
    from PIL import Image

    taken = dict.fromkeys(CIFAR_CLASSES, 0)
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
            labels.append(CIFAR_CLASSES.index(parts[1]))
            taken[parts[1]] += 1
            if split == "train" and all(v >= per_class for v in taken.values()):
                break
    if not images:
        raise FileNotFoundError(f"no {split} images found in {archive}")
    order = np.lexsort((np.arange(len(labels)), labels))
    return np.stack(images)[order], np.asarray(labels, dtype=np.int64)[order]
