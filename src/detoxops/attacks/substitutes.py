"""Stand-ins for the images BackdoorBench ships, plus loaders for user-supplied ones.

BackdoorBench's Blended trigger (``hello_kitty.jpeg``) and Refool's reflection pool (200 Pascal-VOC crops) are
not redistributable here and nothing may be downloaded, so:

* :func:`cartoon_blend_pattern` draws a deterministic cartoon face (white background, black outlines, a
  saturated pink bow, yellow nose) — the same *role* as Hello Kitty (a high-contrast, mostly bright, fixed
  image blended at α = 0.2) with similar statistics: measured on CIFAR-10 test images its α = 0.2 blend has a
  mean L2 / L∞ distance close to BackdoorBench's (see docs/attacks.md).
* :func:`natural_reflection_pool` cuts 200 deterministic crops from the two natural photographs that ship inside
  scikit-learn (``china.jpg``, ``flower.jpg``): natural-image reflections from a dataset other than the victim's,
  as Refool's VOC crops are.

Both accept a user replacement: ``load_image_file`` (one image) and ``load_image_folder`` (a folder of images).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_RESAMPLE = Literal["bilinear", "nearest", "bicubic"]


def _pil_resample(name: _RESAMPLE):
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}[name]


def _resize_rgb(img, size: int, resample: _RESAMPLE) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((size, size), _pil_resample(resample)), dtype=np.uint8)


def load_image_file(path: str | Path, size: int, resample: _RESAMPLE = "bilinear") -> np.ndarray:
    """One image file → uint8 (size, size, 3) RGB, resized like torchvision ``Resize`` on a PIL image."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        with Image.open(p) as img:
            return _resize_rgb(img, size, resample)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {p}: {exc}") from None


def load_image_folder(path: str | Path, size: int, resample: _RESAMPLE = "bilinear") -> np.ndarray:
    """All images in a folder (sorted by name, not recursive) → uint8 (K, size, size, 3)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack([load_image_file(f, size, resample) for f in files])


@lru_cache(maxsize=8)
def _cartoon_canvas(side: int = 320) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), (255, 255, 255))
    d = ImageDraw.Draw(img)
    u = side / 320.0

    def box(x0, y0, x1, y1):
        return [x0 * u, y0 * u, x1 * u, y1 * u]

    lw = max(1, round(7 * u))
    black, pink, yellow = (10, 10, 10), (236, 64, 122), (250, 200, 40)
    d.ellipse(box(30, 70, 290, 300), fill=(255, 255, 255), outline=black, width=lw)  # head
    d.polygon([(50 * u, 120 * u), (70 * u, 20 * u), (135 * u, 85 * u)], fill=(255, 255, 255), outline=black)  # ear
    d.polygon([(270 * u, 120 * u), (250 * u, 20 * u), (185 * u, 85 * u)], fill=(255, 255, 255), outline=black)
    d.ellipse(box(180, 20, 260, 100), fill=pink, outline=black, width=lw)  # bow
    d.ellipse(box(250, 40, 315, 120), fill=pink, outline=black, width=lw)
    d.ellipse(box(235, 55, 275, 95), fill=(200, 30, 90), outline=black, width=lw)
    d.ellipse(box(95, 165, 125, 210), fill=black)  # eyes
    d.ellipse(box(195, 165, 225, 210), fill=black)
    d.ellipse(box(145, 205, 178, 230), fill=yellow, outline=black, width=max(1, lw // 2))  # nose
    for dy in (-18, 0, 18):  # whiskers
        d.line([(0 * u, (205 + dy * 1.5) * u), (80 * u, (210 + dy) * u)], fill=black, width=lw)
        d.line([(320 * u, (205 + dy * 1.5) * u), (240 * u, (210 + dy) * u)], fill=black, width=lw)
    d.rectangle(box(0, 300, 320, 320), fill=(120, 170, 230))  # a coloured strip, as the photo's border
    return np.asarray(img, dtype=np.uint8)


def cartoon_blend_pattern(size: int) -> np.ndarray:
    """The procedural Hello Kitty substitute at ``size``×``size`` (uint8 RGB, deterministic)."""
    from PIL import Image

    return _resize_rgb(Image.fromarray(_cartoon_canvas()), size, "bilinear")


REFLECTION_POOL_SIZE = 200


@lru_cache(maxsize=8)
def natural_reflection_pool(size: int, count: int = REFLECTION_POOL_SIZE, seed: int = 0) -> np.ndarray:
    """``count`` square crops (side 64–256 px) of scikit-learn's two sample photographs, resized to ``size``."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8 photos bundled with scikit-learn
    rng = np.random.default_rng(seed)
    crops = []
    for k in range(count):  # 200 small crops once per process; not a hot path
        photo = photos[k % len(photos)]
        side = int(rng.integers(64, 257))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crops.append(_resize_rgb(crop, size, "bilinear"))
    pool = np.stack(crops)
    pool.setflags(write=False)
    return pool
