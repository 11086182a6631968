"""The attack interface every backdoor attack module implements.

Images are uint8 NHWC numpy arrays (the on-disk form of :class:`detoxops.data.ImageSet`). Trigger functions
compute in float and **truncate** back to uint8 after clipping, as BackdoorBench does (``astype(uint8)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from detoxops.attacks.selection import select_poison_indices


class AttackOptions(BaseModel):
    """Per-attack options; subclasses add fields. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Attack(ABC):
    """One backdoor attack with BackdoorBench's CIFAR-10 defaults (all-to-one target 0, poison ratio 0.1).

    Subclasses set ``name``, ``kind`` ("data": poison the training set once; "loop": the attacker also controls
    the training loop through :meth:`batch_transform`), ``clean_label`` and ``Options``.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["data", "loop"]] = "data"
    clean_label: ClassVar[bool] = False
    Options: ClassVar[type[AttackOptions]] = AttackOptions

    def __init__(
        self,
        *,
        target: int = 0,
        poison_ratio: float = 0.1,
        seed: int = 0,
        image_size: int = 32,
        num_classes: int = 10,
        options: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= target < num_classes:
            raise ValueError(f"attack target {target} out of range for {num_classes} classes")
        if not 0.0 <= poison_ratio <= 1.0:
            raise ValueError(f"poison_ratio must be in [0, 1], got {poison_ratio}")
        self.target = int(target)
        self.poison_ratio = float(poison_ratio)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.options = self.Options(**(options or {}))

    # ------------------------------------------------------------------ resources
    def fit(self, train_images: np.ndarray, train_labels: np.ndarray, **resources: Any) -> None:  # noqa: B027
        """Build what the trigger needs (a PGD set, a generator, a UAP…). Default: nothing to build."""

    # ------------------------------------------------------------------ trigger
    @abstractmethod
    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Return triggered copies of uint8 NHWC ``images`` (never modifies the input)."""

    def trigger_mask(self, images: np.ndarray) -> np.ndarray | None:
        """Boolean (N, H, W) map of the pixels the trigger occupies, when the attack defines one."""
        return None

    # ------------------------------------------------------------------ datasets
    def poison_indices(self, labels: np.ndarray) -> np.ndarray:
        """Training indices to poison, BackdoorBench semantics (see :func:`select_poison_indices`)."""
        return select_poison_indices(
            labels, ratio=self.poison_ratio, target=self.target, clean_label=self.clean_label, seed=self.seed
        )

    def poison_train_arrays(
        self, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(poisoned images, new labels, poison flags) for the training split."""
        _check_images(images)
        idx = self.poison_indices(labels)
        out_images = images.copy()
        out_labels = labels.astype(np.int64, copy=True)
        flags = np.zeros(len(labels), dtype=bool)
        if len(idx):
            out_images[idx] = self.apply_trigger(images[idx], labels[idx])
            if not self.clean_label:
                out_labels[idx] = self.target
            flags[idx] = True
        return out_images, out_labels, flags

    def poison_test_arrays(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(triggered images, true labels) of the non-target test images (the ASR / PA set)."""
        _check_images(images)
        keep = np.flatnonzero(labels != self.target)
        return self.apply_trigger(images[keep], labels[keep]), labels[keep].astype(np.int64), keep

    # ------------------------------------------------------------------ training-loop attacks
    def batch_transform(self, x, y, generator=None):  # pragma: no cover - overridden by loop attacks
        """For ``kind == "loop"``: transform a float [0,1] NCHW batch and its labels during training."""
        return x, y

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target}, poison_ratio={self.poison_ratio}, {self.options!r})"


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"attack expects uint8 images of shape (N, H, W, C), got {got}")


def truncate_to_uint8(x: np.ndarray) -> np.ndarray:
    """BackdoorBench's float → uint8 conversion: clip to [0, 255], then truncate (not round)."""
    return np.clip(x, 0, 255).astype(np.uint8)
