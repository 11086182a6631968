"""A few real CIFAR-10 images per class, read straight from the shared JPEG archive (``<split>/<class>/<file>``)
without decoding the rest: the small-scale attack measurements use it."""

from __future__ import annotations

from pathlib import Path

from detoxops.data.archive_sample import CIFAR10_CLASSES as CIFAR_CLASSES  # noqa: F401 - re-exported
from detoxops.data.archive_sample import read_per_class as read_cifar  # noqa: F401 - re-exported

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
