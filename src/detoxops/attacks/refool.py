"""Refool (Liu et al. 2020) as in BackdoorBench ``main`` ``attack/refool.py`` (dirty-label, fixed α_t = 0.4).

Every poisoned image t (train and test) is blended with a random reflection r from the pool, in linear light
(t' = t^2.2, r' = r^2.2, values in [0, 1]):

* **ghost** branch (probability ``ghost_rate`` = 0.49): offsets (dy, dx) ~ randint(3, 8) px each (scaled with
  the image size), ghost weight a = |round(U[0,1]) − U[0.15, 0.5]|; ghost = a·r' shifted one way +
  (1 − a)·r' shifted the other, cropped and resized back; out = clip((0.6·ghost + 0.4·t')^(1/2.2)).
* **focal-blur** branch: σ ~ U(1, 5) px (scaled), r_b = Gaussian blur of r' (kernel 2⌈2σ⌉ + 1, reflect-101
  border); per channel r_b is lowered by (mean of (r_b + t') over values > 1, minus 1)·(1.08 + U(0, 0.1)) and
  clipped to [0, 1], then weighted by 0.8·G (G: an S×S Gaussian, nsig 3, peak 1, so the reflection sits mostly in
  the centre); out = clip((0.8·G·r_b + 0.4·t')^(1/2.2)).

Output ×255, truncated. Each call draws its random choices from the attack seed, so it is deterministic.
The pool is BackdoorBench's 200 VOC crops there; here the default is
:func:`~detoxops.attacks.substitutes.natural_reflection_pool` (200 crops of scikit-learn's sample photos) and
``reflection_dir`` takes a user folder.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.special import ndtr

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import register
from detoxops.attacks.substitutes import load_image_folder, natural_reflection_pool

GAMMA = 2.2


class RefoolOptions(AttackOptions):
    alpha_t: float = Field(default=0.4, gt=0.0, le=1.0)
    """Weight of the (linear-light) image; the reflection gets 1 − α_t (ghost) or (1 − α_t/2)·G (blur)."""
    ghost_rate: float = Field(default=0.49, ge=0.0, le=1.0)
    offset: tuple[int, int] | None = None
    """Ghost offset (dy, dx) in pixels; ``None`` = randint(3, 8) each at 32 px, scaled, per image."""
    sigma: float | None = Field(default=None, gt=0.0)
    """Focal-blur σ in pixels; ``None`` = U(1, 5) at 32 px, scaled, per image."""
    ghost_alpha: float | None = Field(default=None, ge=0.0, le=1.0)
    """Ghost weight; ``None`` = |round(U[0,1]) − U[0.15, 0.5]| per image."""
    reflection_dir: str | None = None
    """Folder of reflection images; ``None`` = the natural-photo crop substitute."""
    pool_size: int = Field(default=200, ge=1)
    """Number of substitute reflection crops (ignored with ``reflection_dir``)."""


def gaussian_mask(size: int, nsig: float = 3.0) -> np.ndarray:
    """Refool's ``gkern``: a size×size Gaussian from the normal CDF over ±nsig, normalised to peak 1."""
    interval = (2 * nsig + 1.0) / size
    x = np.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, size + 1)
    k1 = np.diff(ndtr(x))
    raw = np.sqrt(np.outer(k1, k1))
    raw = raw / raw.sum()
    return raw / raw.max()


def _blur_kernels(sigmas: np.ndarray) -> tuple[torch.Tensor, int]:
    """OpenCV-style normalised 1-D Gaussian taps, kernel size 2⌈2σ⌉+1 each, zero-embedded in one common width."""
    sizes = 2 * np.ceil(2 * sigmas).astype(int) + 1
    width = int(sizes.max())
    pos = np.arange(width) - width // 2
    taps = np.exp(-(pos[None, :] ** 2) / (2 * sigmas[:, None] ** 2))
    taps[np.abs(pos)[None, :] > (sizes[:, None] // 2)] = 0.0  # outside each sample's own kernel
    taps /= taps.sum(axis=1, keepdims=True)
    return torch.from_numpy(taps), width


@register
class Refool(Attack):
    name: ClassVar[str] = "refool"
    Options: ClassVar[type[AttackOptions]] = RefoolOptions
    options: RefoolOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        o = self.options
        self.pool = (load_image_folder(o.reflection_dir, self.image_size) if o.reflection_dir
                     else natural_reflection_pool(self.image_size, o.pool_size))
        self.focal_mask = gaussian_mask(self.image_size, 3.0)

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        o = self.options
        lo, hi = self.scale_px(3), max(self.scale_px(3), self.scale_px(8))
        scale = self.image_size / 32.0
        return {
            "pool_index": rng.integers(0, len(self.pool), size=n),
            "ghost": rng.random(n) < o.ghost_rate,
            "offset": (np.broadcast_to(np.asarray(o.offset), (n, 2)).copy() if o.offset is not None
                       else rng.integers(lo, hi + 1, size=(n, 2))),
            "ghost_alpha": (np.full(n, o.ghost_alpha) if o.ghost_alpha is not None
                            else np.abs(np.round(rng.random(n)) - rng.uniform(0.15, 0.5, size=n))),
            "sigma": np.full(n, o.sigma) if o.sigma is not None else rng.uniform(1, 5, size=n) * scale,
            "attenuation": 1.08 + rng.random(n) / 10.0,
        }

    def _ghost(self, r: torch.Tensor, offset: np.ndarray, alpha: np.ndarray) -> torch.Tensor:
        """a·r'(p) + (1−a)·r'(p − o) at p = crop-and-resize coordinates of the padded pair (zero outside)."""
        n, _, h, w = r.shape
        off = torch.from_numpy(offset).to(r.dtype)  # (n, 2) = (dy, dx)
        ys = torch.arange(h, dtype=r.dtype)
        xs = torch.arange(w, dtype=r.dtype)
        # cv2.resize of the (h − o)-long crop starting at o, pixel-centre convention
        py = (ys[None] + 0.5) * (h - off[:, :1]) / h - 0.5 + off[:, :1]  # (n, h)
        px = (xs[None] + 0.5) * (w - off[:, 1:]) / w - 0.5 + off[:, 1:]  # (n, w)

        def sample(py_, px_):
            gy = (2 * py_ + 1) / h - 1
            gx = (2 * px_ + 1) / w - 1
            grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
            return F.grid_sample(r, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        a = torch.from_numpy(alpha).to(r.dtype).view(n, 1, 1, 1)
        return a * sample(py, px) + (1 - a) * sample(py - off[:, :1], px - off[:, 1:])

    def _focal(self, r: torch.Tensor, t: torch.Tensor, sigma: np.ndarray, att: np.ndarray) -> torch.Tensor:
        n, c, h, w = r.shape
        taps, width = _blur_kernels(sigma)
        pad = width // 2
        if pad >= min(h, w):
            raise ValueError(f"refool sigma {sigma.max():.2f} is too large for {h}x{w} images")
        weight = taps.to(r.dtype).repeat_interleave(c, dim=0)  # (n·c, width)
        x = r.reshape(1, n * c, h, w)
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, width), groups=n * c)
        x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), weight.view(n * c, 1, width, 1), groups=n * c)
        blurred = x.view(n, c, h, w)
        blend = blurred + t
        over = blend > 1
        mean_over = (blend * over).sum(dim=(2, 3)) / (over.sum(dim=(2, 3)) + 1e-6)
        lower = (mean_over.clamp(min=1.0) - 1) * torch.from_numpy(att).to(r.dtype)[:, None]
        blurred = (blurred - lower[:, :, None, None]).clamp(0, 1)
        g = torch.from_numpy(self.focal_mask).to(r.dtype)
        return blurred * g * (1 - self.options.alpha_t / 2)

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        n = len(images)
        if n == 0:
            return images.copy()
        draw = self._draw(n, np.random.default_rng(self.seed))
        a_t = self.options.alpha_t
        t = (torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2) / 255) ** GAMMA
        r = (torch.from_numpy(self.pool[draw["pool_index"]]).permute(0, 3, 1, 2).to(torch.float64) / 255) ** GAMMA
        reflection = torch.empty_like(t)
        g = torch.from_numpy(draw["ghost"])
        if g.any():
            reflection[g] = self._ghost(r[g], draw["offset"][draw["ghost"]],
                                        draw["ghost_alpha"][draw["ghost"]]) * (1 - a_t)
        if (~g).any():
            keep = ~draw["ghost"]
            reflection[~g] = self._focal(r[~g], t[~g], draw["sigma"][keep], draw["attenuation"][keep])
        out = (reflection + a_t * t).clamp(0, 1) ** (1 / GAMMA)
        return truncate_to_uint8(out.permute(0, 2, 3, 1).numpy() * 255)

