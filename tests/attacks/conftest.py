"""Tiny real images for the attack tests: a slice of CIFAR-10 read straight from the shared JPEG archive, and
scikit-learn digits upscaled to 16×16 RGB (always available)."""

from __future__ import annotations

import numpy as np
import pytest

from detoxops.data.archive_sample import read_per_class as _read_cifar


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
