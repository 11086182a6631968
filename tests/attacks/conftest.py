"""Tiny real images for the attack tests: a slice of CIFAR-10 read straight from the shared JPEG archive, and
scikit-learn digits upscaled to 16×16 RGB (always available)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _read_cifar(archive, split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    taken = {c: 0 for c in CIFAR_CLASSES}
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
    order = np.lexsort((np.arange(len(labels)), labels))
    return np.stack(images)[order], np.asarray(labels, dtype=np.int64)[order]


@pytest.fixture(scope="session")
def cifar_small(cifar_archive):
    """(train_images, train_labels, test_images, test_labels): 20 + 10 real CIFAR-10 images per class."""
    xtr, ytr = _read_cifar(cifar_archive, "train", 20)
    xte, yte = _read_cifar(cifar_archive, "test", 10)
    return xtr, ytr, xte, yte


@pytest.fixture(scope="session")
def digits16():
    """scikit-learn digits as uint8 16×16 RGB (1797 real images, 10 classes)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = (d.images / 16.0 * 255).astype(np.uint8)
    up = np.stack([np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR)) for im in raw])
    return np.repeat(up[..., None], 3, axis=-1), d.target.astype(np.int64)


@pytest.fixture(scope="session")
def fit_digits(digits16):
    """``fit_digits(name, options, n, seed=0)``: attack ``name`` at 16 px fitted on the first ``n`` digits."""
    from detoxops.attacks import registry

    x, y = digits16

    def fit(name: str, options: dict, n: int, seed: int = 0):
        attack = registry.create(name, image_size=16, seed=seed, options=options)
        attack.fit(x[:n], y[:n], progress=False)
        return attack

    return fit
