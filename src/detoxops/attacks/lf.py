"""Low Frequency attack (Zeng et al. 2021) as in BackdoorBench ``attack/lf.py``: x' = clip(x + P), truncated.

P is a fixed, smooth, non-negative universal adversarial perturbation towards the target class, values
0..0.2·255 = 0..51. BackdoorBench ships one for CIFAR-10 / PreAct-ResNet18; here :meth:`LowFrequency.fit` makes it
with the platform's own code on a *clean* classifier (``model=``, float [0, 1] NCHW → logits):

* a targeted universal perturbation v over ``num_images`` = 100 training images: every pass takes a gradient
  step towards the target on the images v does not fool yet (BackdoorBench runs targeted DeepFool per image;
  a batched signed-gradient step plays the same role, vectorised);
* after every update v ← smooth(v + smooth(r)) with a separable depthwise Gaussian low-pass (30 taps, σ = 6 px at
  32 px, scaled with the image size, zero padding), then v is min–max normalised to [0, 0.2];
* it stops after ``max_passes`` = 50, when the fooling rate on a held-out set (10 non-target images per class)
  reaches 1 − δ (δ = 0.8), or when the rate plateaus (max − min < 0.01 over the last 5 passes).

Cost: each pass is one forward + backward over ≤ 100 images and one forward over the held-out set — seconds on a
CPU for a small CNN at 32 px (measured numbers in docs/attacks.md). Alternatively ``pattern_path`` names a
ready pattern (``.npy``, uint8 or float on the 0–255 scale, S×S×3), e.g. BackdoorBench's shipped file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import register

PATTERN_FILE = "lf_pattern.npy"


class LowFrequencyOptions(AttackOptions):
    pattern_path: str | None = None
    """A ready pattern (.npy, S×S×3 on the 0–255 scale); skips fitting."""
    num_images: int = Field(default=100, ge=1)
    """Training images the universal perturbation is fitted on."""
    holdout_per_class: int = Field(default=10, ge=1)
    """Held-out images per non-target class for the fooling rate."""
    max_passes: int = Field(default=50, ge=1)
    delta: float = Field(default=0.8, gt=0.0, lt=1.0)
    """Stop once the fooling rate reaches 1 − delta."""
    step_size: float = Field(default=0.02, gt=0.0)
    """Signed-gradient step per pass (on the [0, 1] scale, before smoothing and normalisation)."""
    max_value: float = Field(default=0.2, gt=0.0, le=1.0)
    """v is min–max normalised to [0, max_value] (0.2 → 51 grey levels)."""
    lowpass_taps: int | None = Field(default=None, ge=1)
    """Gaussian taps; ``None`` = 30 at 32 px, scaled."""
    lowpass_sigma: float | None = Field(default=None, gt=0.0)
    """Gaussian σ in pixels; ``None`` = 6 at 32 px, scaled."""
    batch_size: int = Field(default=100, ge=1)


def gaussian_taps(taps: int, sigma: float) -> torch.Tensor:
    pos = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    k = torch.exp(-(pos**2) / (2 * sigma**2))
    return k / k.sum()


def lowpass(v: torch.Tensor, taps: int, sigma: float) -> torch.Tensor:
    """Separable depthwise Gaussian blur of (B, C, H, W) with zero padding ('same' size)."""
    k = gaussian_taps(taps, sigma).to(v)
    c = v.shape[1]
    lo, hi = (taps - 1) // 2, taps // 2  # 'same' output for even tap counts too
    v = F.conv2d(F.pad(v, (lo, hi, 0, 0)), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(v, (0, 0, lo, hi)), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def low_frequency_energy(pattern: np.ndarray, cutoff: int) -> float:
    """Share of the spectral energy (all channels, DC included) at |f_row|, |f_col| < ``cutoff`` cycles/image."""
    spec = np.abs(np.fft.fft2(np.asarray(pattern, dtype=np.float64), axes=(0, 1))) ** 2
    f = np.abs(np.fft.fftfreq(pattern.shape[0]) * pattern.shape[0])
    g = np.abs(np.fft.fftfreq(pattern.shape[1]) * pattern.shape[1])
    low = (f[:, None] < cutoff) & (g[None, :] < cutoff)
    return float(spec[low].sum() / spec.sum())


def _minmax(v: torch.Tensor, top: float) -> torch.Tensor:
    span = v.max() - v.min()
    return (v - v.min()) / span * top if span > 0 else torch.zeros_like(v)


@register
class LowFrequency(Attack):
    name: ClassVar[str] = "lf"
    needs_fit: ClassVar[bool] = True
    needs_model: ClassVar[bool] = True
    Options: ClassVar[type[AttackOptions]] = LowFrequencyOptions
    options: LowFrequencyOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pattern: np.ndarray | None = None  # uint8 (S, S, 3)
        self.fit_report: dict[str, Any] = {}
        if self.options.pattern_path:
            self.pattern = self._read_pattern(Path(self.options.pattern_path))

    @property
    def taps(self) -> int:
        return self.options.lowpass_taps or self.scale_px(30)

    @property
    def sigma(self) -> float:
        return self.options.lowpass_sigma or 6.0 * self.image_size / 32.0

    @property
    def is_fitted(self) -> bool:
        return self.pattern is not None

    def _read_pattern(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"LF pattern file not found: {path}")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"LF pattern {path}: not a readable .npy array: {exc}") from None
        if arr.shape != (self.image_size, self.image_size, 3):
            raise ValueError(f"LF pattern {path}: shape {arr.shape}, expected "
                             f"({self.image_size}, {self.image_size}, 3)")
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"LF pattern {path}: values must be finite and in [0, 255]")
        return truncate_to_uint8(arr)

    # -------------------------------------------------------------- fitting
    def fit(self, train_images: np.ndarray, train_labels: np.ndarray, model: torch.nn.Module | None = None,
            progress: bool = True, **resources: Any) -> None:
        """Fit the low-pass targeted universal perturbation on a clean ``model`` (see the module docstring)."""
        if self.options.pattern_path:
            return
        if model is None:
            raise ValueError("attack 'lf' needs a clean surrogate classifier to fit its perturbation: pass "
                             "fit(..., model=<torch classifier on [0, 1] NCHW>) or set options.lf.pattern_path "
                             "to a ready .npy pattern")
        self.check_images(train_images)
        o = self.options
        rng = np.random.default_rng(self.seed)
        labels = np.asarray(train_labels)
        pick = rng.choice(len(labels), size=min(o.num_images, len(labels)), replace=False)
        rest = np.setdiff1d(np.arange(len(labels)), pick)
        hold = np.concatenate([
            rng.permutation(rest[labels[rest] == c])[: o.holdout_per_class]
            for c in range(self.num_classes) if c != self.target
        ]).astype(np.int64)
        if len(hold) == 0:
            raise ValueError("attack 'lf': no non-target images left for the held-out fooling rate")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        to01 = lambda a: torch.from_numpy(a.astype(np.float32)).permute(0, 3, 1, 2).div(255).to(device)  # noqa: E731
        x_fit, x_hold = to01(train_images[pick]), to01(train_images[hold])
        target = torch.full((len(x_fit),), self.target, dtype=torch.long, device=device)
        v = torch.zeros(1, 3, self.image_size, self.image_size, device=device)
        rates: list[float] = []
        bar = tqdm(range(o.max_passes), desc="lf: universal perturbation", disable=not progress)
        try:
            for _ in bar:
                with torch.no_grad():
                    fooled = _predict(model, (x_fit + v).clamp(0, 1), o.batch_size) == self.target
                todo = torch.nonzero(~fooled).flatten()
                for start in range(0, len(todo), o.batch_size):
                    idx = todo[start : start + o.batch_size]
                    xv = (x_fit[idx] + v).clamp(0, 1).requires_grad_(True)
                    loss = F.cross_entropy(model(xv), target[idx])
                    (grad,) = torch.autograd.grad(loss, xv)
                    r = -o.step_size * grad.sum(0, keepdim=True).sign()  # one step towards the target
                    v = lowpass(v + lowpass(r, self.taps, self.sigma), self.taps, self.sigma)
                    v = _minmax(v, o.max_value)
                with torch.no_grad():
                    rate = float((_predict(model, (x_hold + v).clamp(0, 1), o.batch_size) == self.target)
                                 .float().mean())
                rates.append(rate)
                bar.set_postfix(fooling=f"{rate:.3f}")
                if rate >= 1 - o.delta or (len(rates) >= 5 and max(rates[-5:]) - min(rates[-5:]) < 0.01):
                    break
        finally:
            model.train(was_training)
        self.pattern = truncate_to_uint8(v[0].permute(1, 2, 0).cpu().double().numpy() * 255)
        self.fit_report = {"passes": len(rates), "fooling_rate": rates[-1] if rates else 0.0,
                           "fooling_rates": rates}

    def save_state(self, folder: str | Path) -> list[Path]:
        if self.pattern is None:
            raise ValueError("attack 'lf' is not fitted: nothing to save")
        path = Path(folder) / PATTERN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.pattern, allow_pickle=False)
        return [path]

    def load_state(self, folder: str | Path) -> None:
        self.pattern = self._read_pattern(Path(folder) / PATTERN_FILE)

    # -------------------------------------------------------------- trigger
    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        self.check_images(images)
        if self.pattern is None:
            raise ValueError("attack 'lf' has no perturbation yet: call fit(images, labels, model=...) or set "
                             "options.lf.pattern_path")
        return truncate_to_uint8(images.astype(np.float64) + self.pattern.astype(np.float64)[None])


def _predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
