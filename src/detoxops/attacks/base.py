"""The attack interface every backdoor attack module implements.

Images are uint8 NHWC numpy arrays (the on-disk form of :class:`detoxops.data.ImageSet`). Trigger functions
compute in float and **truncate** back to uint8 after clipping, as BackdoorBench does (``astype(uint8)``).

Sizes that BackdoorBench specifies in pixels at 32×32 (BadNets' 3×3 patch, LF's 30-tap σ = 6 low-pass, Refool's
3–8 px ghost offset, …) are scaled to ``image_size`` with :meth:`Attack.scale_px`; sizes given relative to the
image (SIG's cycles per width, WaNet's normalised grid) need no scaling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from detoxops.attacks.selection import select_poison_indices

REFERENCE_SIZE = 32
"""Image side (CIFAR-10) at which BackdoorBench's pixel-sized defaults are specified."""


class AttackOptions(BaseModel):
    """Per-attack options; subclasses add fields. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Attack(ABC):
    """One backdoor attack with BackdoorBench's CIFAR-10 defaults (all-to-one target 0, poison ratio 0.1).

    Subclasses set ``name``, ``kind`` ("data": poison the training set once; "loop": the attacker also controls
    the training loop through :meth:`batch_transform`), ``clean_label`` and ``Options``.

    ``needs_fit`` says that :meth:`fit` must run before :meth:`apply_trigger` (LF, SSBA, …); ``needs_model``
    that ``fit`` needs a ``model=`` (a torch classifier taking float [0, 1] NCHW). ``trigger_uses_state`` is False
    when the fitted state serves only :meth:`poison_train_arrays` (LC's adversarial training images): the test
    trigger then needs no fit, and a stored victim's attack record leaves the state out.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["data", "loop"]] = "data"
    clean_label: ClassVar[bool] = False
    needs_fit: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False
    trigger_uses_state: ClassVar[bool] = True
    trigger_state_prefixes: ClassVar[tuple[str, ...] | None] = None
    """The safetensors key prefixes of the fitted state that :meth:`apply_trigger` reads (None: all of it); a stored
    victim's attack record keeps only these (SSBA: the encoder, not the decoder that only fitting needs)."""
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
        jpeg_quality: int | None = None,
    ) -> None:
        if not 0 <= target < num_classes:
            raise ValueError(f"attack target {target} out of range for {num_classes} classes")
        if not 0.0 <= poison_ratio <= 1.0:
            raise ValueError(f"poison_ratio must be in [0, 1], got {poison_ratio}")
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        self.target = int(target)
        self.poison_ratio = float(poison_ratio)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.options = self.Options(**(options or {}))
        if jpeg_quality is not None and not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100] or None, got {jpeg_quality}")
        self.jpeg_quality = None if jpeg_quality is None else int(jpeg_quality)
        """Training images the attack changes are stored as JPEG at this quality (None: as computed). A dataset
        kept as JPEG (the JPEG copy of CIFAR-10) holds its poisoned images as JPEG too; without this, a victim can
        learn "not JPEG-like" instead of the trigger (measured: docs/attacks.md, "JPEG sources"). Test-time
        triggers are applied as computed, as in BackdoorBench."""

    # ------------------------------------------------------------------ helpers
    def scale_px(self, pixels_at_32: float, minimum: int = 1) -> int:
        """A length given in pixels at 32×32, scaled to ``image_size`` (rounded, at least ``minimum``)."""
        return max(minimum, int(round(pixels_at_32 * self.image_size / REFERENCE_SIZE)))

    def check_images(self, images: np.ndarray) -> None:
        """uint8 (N, S, S, 3) with S = ``image_size``, else ValueError naming the problem."""
        _check_images(images)
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"attack {self.name!r} was built for {self.image_size}x{self.image_size} images, got "
                f"{images.shape[1]}x{images.shape[2]}"
            )
        if images.shape[3] != 3:
            raise ValueError(f"attack {self.name!r} expects RGB images (C = 3), got C = {images.shape[3]}")

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable record of this attack (stored in ``ImageSet.meta['attack']``)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "clean_label": self.clean_label,
            "target": self.target,
            "poison_ratio": self.poison_ratio,
            "seed": self.seed,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "options": self.options.model_dump(mode="json"),
        } | ({} if self.jpeg_quality is None else {"jpeg_quality": self.jpeg_quality})

    # ------------------------------------------------------------------ resources
    def fit(self, train_images: np.ndarray, train_labels: np.ndarray, **resources: Any) -> None:  # noqa: B027
        """Build what the trigger needs (a PGD set, a generator, a UAP…). Default: nothing to build."""

    @property
    def is_fitted(self) -> bool:
        """True when :meth:`apply_trigger` can run (always, for attacks that need no fitting)."""
        return True

    def save_state(self, folder: str | Path) -> list[Path]:  # noqa: B027
        """Write what :meth:`fit` built (safetensors / ``.npy``) into ``folder``; returns the files written."""
        return []

    def load_state(self, folder: str | Path) -> None:  # noqa: B027
        """Read what :meth:`save_state` wrote (no pickle)."""

    # ------------------------------------------------------------------ trigger
    @abstractmethod
    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Return triggered copies of uint8 NHWC ``images`` (never modifies the input)."""

    def trigger_mask(self, images: np.ndarray) -> np.ndarray | None:
        """Boolean (N, H, W) map of the pixels the trigger changes on ``images``.

        Default: the support of ``apply_trigger(images) != images`` (any channel). Attacks with a fixed trigger
        region (BadNets) return that region instead.
        """
        return np.any(self.apply_trigger(images) != images, axis=-1)

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
        self.check_images(images)
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

    def poison_test_arrays(
        self, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(triggered images, true labels, kept indices) of the non-target test images (the ASR / PA set)."""
        self.check_images(images)
        keep = np.flatnonzero(labels != self.target)
        return self.apply_trigger(images[keep], labels[keep]), labels[keep].astype(np.int64), keep

    # ------------------------------------------------------------------ training-loop attacks
    def batch_transform(self, x, y, generator=None):  # pragma: no cover - overridden by loop attacks
        """For ``kind == "loop"``: transform a float [0,1] NCHW batch and its labels during training."""
        return x, y

    def training_batch(self, x, y, generator=None):
        """What the training loops call: :meth:`batch_transform`, then, with ``jpeg_quality``, the samples it
        changed stored as JPEG (:func:`jpeg_roundtrip`, through uint8 as a stored image would be)."""
        import torch

        before = x.clone() if self.jpeg_quality is not None else None
        x, y = self.batch_transform(x, y, generator=generator)
        if before is None or x.shape != before.shape:
            return x, y
        changed = (x != before).flatten(1).any(1)
        if bool(changed.any()):
            u8 = (x[changed].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            stored = torch.from_numpy(jpeg_roundtrip(u8, self.jpeg_quality)).permute(0, 3, 1, 2)
            x = x.clone()
            x[changed] = stored.to(device=x.device, dtype=x.dtype) / 255.0
        return x, y

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target}, poison_ratio={self.poison_ratio}, {self.options!r})"


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"attack expects uint8 images of shape (N, H, W, C), got {got}")


def jpeg_roundtrip(images: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (N, H, W, 3) images encoded as JPEG at ``quality`` and decoded again (PIL, 4:2:0 subsampling as
    PIL's default and the JPEG copy of CIFAR-10): what a dataset stored as JPEG holds. One codec call per image:
    the codec works on single images."""
    import io

    from PIL import Image

    _check_images(images)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def truncate_to_uint8(x: np.ndarray) -> np.ndarray:
    """BackdoorBench's float → uint8 conversion: clip to [0, 255], then truncate (not round)."""
    return np.clip(x, 0, 255).astype(np.uint8)


FLOAT_GUARD = 1e-6
"""Grey levels added before truncating the output of a float pipeline (warps, resampling) so that float
round-off (254.99999999) does not drop an unchanged pixel one level; see :func:`truncate_float_pipeline`."""


def truncate_float_pipeline(x255: np.ndarray) -> np.ndarray:
    """Truncate the result of a float resampling pipeline on the 0–255 scale to uint8.

    BackdoorBench's tensor-space attacks lose one grey level on some unchanged pixels from
    normalise → de-normalise round-off (§1.4 of the attack spec); that artefact is not reproduced: values within
    ``FLOAT_GUARD`` below an integer are taken as that integer, everything else is truncated as usual.
    """
    return truncate_to_uint8(np.asarray(x255, dtype=np.float64) + FLOAT_GUARD)
