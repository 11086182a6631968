"""Validation and normalisation policy: every way an input can be wrong gets an error naming the input.

Two explicit policies bring images to the stored convention (uint8 RGB, one size):

* ``image_size``: resize every image to ``image_size × image_size`` (PIL bilinear); ``None`` keeps sizes and
  rejects a set whose images differ in size.
* ``color``: ``"rgb"`` converts grayscale / RGBA / palette / CMYK images to RGB (alpha is dropped);
  ``"keep"`` converts nothing and rejects any image that is not already RGB (so mixed modes are an error).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile

from detoxops.data.limits import InputLimitError, limit_error

__all__ = [
    "ImagePolicy",
    "IMAGE_SUFFIXES",
    "decode_image",
    "resize_images",
    "check_same_size",
    "check_finite",
    "normalise_array_images",
    "normalise_labels",
]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".webp", ".tif", ".tiff"}
)
# Modes PIL converts to RGB without losing meaning; 16-bit / float modes would be silently clipped.
_CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


@dataclass(frozen=True)
class ImagePolicy:
    image_size: int | None = None
    color: Literal["rgb", "keep"] = "rgb"

    def __post_init__(self) -> None:
        if self.color not in ("rgb", "keep"):
            raise ValueError(f"data.color must be 'rgb' or 'keep', got {self.color!r}")
        if self.image_size is not None and int(self.image_size) < 1:
            raise ValueError(f"data.image_size must be positive, got {self.image_size}")

    @classmethod
    def from_config(cls, cfg) -> ImagePolicy:  # cfg: detoxops.config.DataConfig
        return cls(image_size=cfg.image_size, color=cfg.color)

    def describe(self) -> dict:
        return {"image_size": self.image_size, "color": self.color}


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8 (H, W, 3), already resized under the policy
    mode: str  # PIL mode before conversion
    size: tuple[int, int]  # (width, height) before resizing


def decode_image(data: bytes, name: str, policy: ImagePolicy, max_pixels: int | None = None) -> DecodedImage:
    """Decode one encoded image fully (so truncation is caught here) and apply the colour / size policy.

    ``max_pixels``: refuse an image whose header declares more than this many pixels (width x height) before
    any pixel is decoded, with an :class:`~detoxops.data.limits.InputLimitError` naming ``data.limits.image_pixels``
    (a 10 kB PNG can declare 10000 x 10000 pixels)."""
    # Another library may have relaxed PIL globally; a truncated image must still fail here (restored below).
    relaxed, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with warnings.catch_warnings():
            # PIL warns above ~89M pixels; the configured limit below is the check that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img_file = Image.open(io.BytesIO(data))
        with img_file as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise limit_error(name, f"the image's size ({width}x{height} pixels, from its header)",
                                  width * height, "image_pixels", int(max_pixels))
            img.load()
            mode, size = img.mode, img.size
            if mode != "RGB":
                if policy.color == "keep":
                    raise _PolicyError(
                        f"{name}: image mode {mode} is not RGB and data.color is 'keep' "
                        "(set data.color: rgb to convert grayscale / RGBA / palette images)"
                    )
                if mode not in _CONVERTIBLE_MODES:
                    raise _PolicyError(f"{name}: unsupported image mode {mode} (16-bit or float images)")
                img = img.convert("RGBA").convert("RGB") if mode in ("P", "PA") else img.convert("RGB")
            if policy.image_size is not None and img.size != (policy.image_size, policy.image_size):
                img = img.resize((policy.image_size, policy.image_size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except InputLimitError:
        raise
    except _PolicyError as exc:
        raise ValueError(str(exc)) from None
    except Image.DecompressionBombError as exc:  # PIL's own hard bound (2 x MAX_IMAGE_PIXELS), checked at open
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        found = int(declared.group(1)) if declared else None
        pil_bound = 2 * int(Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels is not None and found is not None and found > max_pixels:
            raise limit_error(name, "the image's size in pixels (from its header)", found, "image_pixels",
                              int(max_pixels)) from None
        raise InputLimitError(
            f"{name}: the image is too large: {found or 'more than ' + format(pil_bound, ',')} pixels (from its "
            f"header), over Pillow's hard bound of {pil_bound:,} pixels (PIL.Image.MAX_IMAGE_PIXELS x 2), which "
            "data.limits.image_pixels does not raise"
        ) from None
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, …
        raise ValueError(
            f"{name}: unreadable, corrupt or truncated image ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = relaxed
    return DecodedImage(pixels=pixels, mode=mode, size=size)


class _PolicyError(Exception):
    pass


def check_same_size(sizes: list[tuple[int, int]], names: list[str], origin: str) -> None:
    """With no resize policy every image must have the same size; name two that differ."""
    if not sizes:
        return
    first = sizes[0]
    for size, name in zip(sizes, names, strict=True):
        if size != first:
            raise ValueError(
                f"{origin}: mixed image sizes ({first[0]}x{first[1]} in {names[0]}, {size[0]}x{size[1]} in "
                f"{name}) and no resize policy; set data.image_size to resize every image"
            )


def resize_images(images: np.ndarray, size: int, progress: bool = False) -> np.ndarray:
    """Resize uint8 NHWC RGB images to ``size × size`` with PIL bilinear (the same filter as decoding)."""
    from detoxops.progress import tqdm

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((images.shape[0], size, size, 3), dtype=np.uint8)
    for i in tqdm(range(images.shape[0]), desc="resize", unit="img", disable=not progress):
        out[i] = np.asarray(Image.fromarray(images[i]).resize((size, size), Image.Resampling.BILINEAR))
    return out


def check_finite(arr: np.ndarray, name: str) -> None:
    """Float arrays must not contain NaN or inf; name how many and where the first one is."""
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = np.unravel_index(int(np.argmax(bad)), arr.shape)
            raise ValueError(
                f"{name} contain {int(bad.sum())} NaN/inf value(s), first at index {tuple(int(i) for i in first)}"
            )


def normalise_array_images(images: np.ndarray, policy: ImagePolicy, name: str = "images") -> np.ndarray:
    """Any NHWC array (uint8 / integer in [0, 255] / float in [0, 1]; 1, 3 or 4 channels, or NHW) → uint8 RGB."""
    arr = np.asarray(images)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a numeric array, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"{name} must have shape (N, H, W[, C]), got {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4):
        hint = " (looks like NCHW; transpose to NHWC)" if arr.shape[1] in (1, 3, 4) else ""
        raise ValueError(f"{name} must have 1, 3 or 4 channels last, got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if np.issubdtype(arr.dtype, np.floating):
        check_finite(arr, name)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"float {name} must lie in [0, 1], found range [{lo:g}, {hi:g}]")
        arr = np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer {name} must lie in [0, 255], found range [{lo}, {hi}]")
        arr = arr.astype(np.uint8)
    channels = arr.shape[-1]
    if channels != 3:
        if policy.color == "keep":
            raise ValueError(
                f"{name} have {channels} channel(s), not RGB, and data.color is 'keep' (set data.color: rgb to convert)"
            )
        arr = np.repeat(arr, 3, axis=-1) if channels == 1 else arr[..., :3]
    arr = np.ascontiguousarray(arr)
    if policy.image_size is not None:
        arr = resize_images(arr, int(policy.image_size))
    return arr


def normalise_labels(labels: np.ndarray, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """Integer labels of length ``n`` in ``[0, num_classes)`` → int64; errors name the first bad index."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        check_finite(arr, name)
        raise ValueError(f"{name} must be integers, got {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise ValueError(f"{name} must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes))
    if bad.size:
        raise ValueError(
            f"{name} out of range [0, {num_classes}): label {int(arr[bad[0]])} at index {int(bad[0])} "
            f"({bad.size} out of range)"
        )
    return arr
