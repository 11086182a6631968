"""SSBA / ISSBA (Li et al. 2021) as in BackdoorBench ``attack/ssba.py`` + ``resource/ssba``: every poisoned image
is *replaced* by its StegaStamp encoding of one fixed fingerprint, so the trigger is invisible and
sample-specific.

BackdoorBench ships no encoder (its arrays are on a Google Drive); :meth:`SSBA.fit` trains one with the platform's
own code, a CPU-scale StegaStamp:

* **encoder**: fingerprint (``bits`` = 32 at CPU scale; BackdoorBench 100) → Linear(bits → 3·(S/2)²) + ReLU → 3×S/2×S/2, upsampled ×2, stacked
  with the image → a 3-level U-Net (``width`` 16/32/64 channels, skip connections) → sigmoid. With
  ``residual: false`` (BackdoorBench's ``use_residual 0``) that output *is* the encoded image; the CPU-scale
  default ``residual: true`` adds it, centred, to the image (x + 2·(out − 0.5)·``residual_scale``), which reaches an
  invisible encoding in far fewer steps;
* **decoder**: stride-2 convolutions down to 4×4, then an MLP → ``bits`` logits;
* **training**: random fingerprints per sample, Adam (lr 1e-3 at CPU scale; BackdoorBench 1e-4 for 20 epochs),
  loss = w_L2·MSE(encoded, clean) + BCE(bits); w_L2 stays 0 until the bit accuracy first exceeds 0.9, then
  after ``l2_await`` steps ramps linearly to ``l2_max`` = 10 over ``l2_ramp`` steps (BackdoorBench: 1000 / 3000 at
  15.6k steps; here scaled to ``steps``);
* **fingerprint**: one fixed ``bits``-long code derived from ``secret`` = "stega!!" by SHA-256 (BackdoorBench
  BCH-encodes the secret; the error-correcting code only matters for decoding, not for the trigger).

Deterministic given the seed (its own torch / numpy generators; global RNG state is restored). Cost: see
docs/attacks.md. Weights are saved as safetensors (``save_state`` / ``load_state``, or ``encoder_path``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import register
from detoxops.seeding import seeded

WEIGHTS_FILE = "ssba_stegastamp.safetensors"


class SSBAOptions(AttackOptions):
    bits: int = Field(default=32, ge=1)
    """Fingerprint length (BackdoorBench: 100; 32 converges in CPU-scale budgets, see docs/attacks.md)."""
    secret: str = "stega!!"
    width: int = Field(default=16, ge=4)
    """Channels of the first U-Net level (then ×2, ×4)."""
    residual: bool = True
    """CPU-scale default: the encoder outputs a bounded change added to the image; false = BackdoorBench's
    direct output (``use_residual 0``)."""
    residual_scale: float = Field(default=0.1, gt=0.0, le=1.0)
    """Largest change per pixel in residual mode, on the [0, 1] scale (0.1 = 25.5 grey levels)."""
    steps: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    l2_max: float = Field(default=10.0, ge=0.0)
    l2_await: int | None = Field(default=None, ge=0)
    """Steps after bit accuracy first exceeds 0.9 before the L2 ramp; ``None`` = steps · 1000/15600."""
    l2_ramp: int | None = Field(default=None, ge=1)
    """Steps of the linear L2 ramp; ``None`` = steps · 3000/15600."""
    max_train_images: int | None = Field(default=5000, ge=1)
    """Training images used (random subset, CPU scale); ``None`` = all."""
    encoder_path: str | None = None
    """A folder holding a saved ``ssba_stegastamp.safetensors``; skips training."""


def fingerprint_bits(secret: str, n_bits: int) -> np.ndarray:
    """A fixed {0, 1} float32 code of length ``n_bits`` derived from ``secret`` by SHA-256."""
    stream = b""
    counter = 0
    while len(stream) * 8 < n_bits:
        stream += hashlib.sha256(f"{secret}:{counter}".encode()).digest()
        counter += 1
    return np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:n_bits].astype(np.float32)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class StegaEncoder(nn.Module):
    def __init__(self, size: int, bits: int, width: int) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"SSBA encoder needs an image size divisible by 8, got {size}")
        self.size = size
        self.secret_dense = nn.Linear(bits, 3 * (size // 2) ** 2)
        w = width
        self.c1, self.c2 = _block(6, w), _block(w, w, 2)
        self.c3, self.c4 = _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2)
        self.u3, self.m3 = _block(4 * w, 2 * w), _block(4 * w, 2 * w)
        self.u2, self.m2 = _block(2 * w, w), _block(2 * w, w)
        self.u1, self.m1 = _block(w, w), _block(2 * w, w)
        self.out = nn.Conv2d(w, 3, 1)

    def forward(self, fingerprint: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.size // 2
        s = F.relu(self.secret_dense(fingerprint)).view(-1, 3, h, h)
        s = F.interpolate(s, scale_factor=2, mode="nearest")
        x1 = self.c1(torch.cat([s, image], 1))
        x2 = self.c2(x1)
        x3 = self.c3(x2)
        x4 = self.c4(x3)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        y3 = self.m3(torch.cat([x3, self.u3(up(x4))], 1))
        y2 = self.m2(torch.cat([x2, self.u2(up(y3))], 1))
        y1 = self.m1(torch.cat([x1, self.u1(up(y2))], 1))
        return torch.sigmoid(self.out(y1))


class StegaDecoder(nn.Module):
    def __init__(self, size: int, bits: int, width: int) -> None:
        super().__init__()
        layers, c, s = [_block(3, width)], width, size
        while s > 4:
            layers.append(_block(c, min(2 * c, 8 * width), 2))
            c, s = min(2 * c, 8 * width), s // 2
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, bits))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(image))


@register
class SSBA(Attack):
    name: ClassVar[str] = "ssba"
    needs_fit: ClassVar[bool] = True
    trigger_state_prefixes: ClassVar[tuple[str, ...] | None] = ("encoder.",)
    Options: ClassVar[type[AttackOptions]] = SSBAOptions
    options: SSBAOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        o = self.options
        self.fingerprint = fingerprint_bits(o.secret, o.bits)
        with seeded(self.seed):
            self.encoder = StegaEncoder(self.image_size, o.bits, o.width)
            self.decoder = StegaDecoder(self.image_size, o.bits, o.width)
        self._fitted = False
        self.has_decoder = True
        self.fit_report: dict[str, Any] = {}
        if o.encoder_path:
            self.load_state(o.encoder_path)

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def encode01(self, x01: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        out = self.encoder(bits, x01)
        if self.options.residual:
            return (x01 + 2 * (out - 0.5) * self.options.residual_scale).clamp(0, 1)
        return out

    # -------------------------------------------------------------- fitting
    def fit(self, train_images: np.ndarray, train_labels: np.ndarray | None = None, progress: bool = True,
            **resources: Any) -> None:
        """Train the encoder / decoder on ``train_images`` (see the module docstring)."""
        if self.options.encoder_path:
            return
        self.check_images(train_images)
        o = self.options
        rng = np.random.default_rng(self.seed)
        pool = train_images
        if o.max_train_images is not None and len(pool) > o.max_train_images:
            pool = pool[np.sort(rng.choice(len(pool), o.max_train_images, replace=False))]
        data = torch.from_numpy(pool.astype(np.float32)).permute(0, 3, 1, 2).div(255)
        gen = torch.Generator().manual_seed(self.seed)
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        opt = torch.optim.Adam(params, lr=o.lr)
        await_steps = o.l2_await if o.l2_await is not None else int(o.steps * 1000 / 15600)
        ramp_steps = o.l2_ramp if o.l2_ramp is not None else max(1, int(o.steps * 3000 / 15600))
        reached: int | None = None
        history: list[tuple[float, float]] = []
        self.encoder.train()
        self.decoder.train()
        bar = tqdm(range(o.steps), desc="ssba: StegaStamp", disable=not progress)
        for step in bar:
            idx = torch.randint(0, len(data), (min(o.batch_size, len(data)),), generator=gen)
            x = data[idx]
            bits = torch.randint(0, 2, (len(idx), o.bits), generator=gen).float()
            enc = self.encode01(x, bits)
            logits = self.decoder(enc)
            bce = F.binary_cross_entropy_with_logits(logits, bits)
            mse = F.mse_loss(enc, x)
            acc = float(((logits > 0).float() == bits).float().mean())
            if reached is None and acc > 0.9:
                reached = step
            w_l2 = 0.0
            if reached is not None:
                w_l2 = o.l2_max * min(1.0, max(0.0, (step - reached - await_steps) / ramp_steps))
            loss = w_l2 * mse + bce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append((acc, float(mse.detach())))
            if step % 50 == 0:
                bar.set_postfix(bit_acc=f"{acc:.3f}", mse=f"{history[-1][1]:.5f}", w_l2=f"{w_l2:.2f}")
        self.encoder.eval()
        self.decoder.eval()
        self._fitted = True
        tail = history[-min(50, len(history)):]
        self.fit_report = {"steps": o.steps, "bit_acc_reached_0.9_at": reached,
                           "train_bit_acc": float(np.mean([a for a, _ in tail])),
                           "train_mse": float(np.mean([m for _, m in tail]))}

    def save_state(self, folder: str | Path) -> list[Path]:
        from safetensors.torch import save_file

        if not self._fitted:
            raise ValueError("attack 'ssba' is not fitted: nothing to save")
        path = Path(folder) / WEIGHTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"encoder.{k}": v.detach().contiguous() for k, v in self.encoder.state_dict().items()}
        tensors.update({f"decoder.{k}": v.detach().contiguous() for k, v in self.decoder.state_dict().items()})
        save_file(tensors, str(path), metadata={"bits": str(self.options.bits), "size": str(self.image_size),
                                                "width": str(self.options.width)})
        return [path]

    def load_state(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(folder)
        path = path / WEIGHTS_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"SSBA weights not found: {path}")
        tensors = load_file(str(path))
        # A victim store's copy carries the encoder only (the trigger's part); the decoder then keeps its init.
        self.has_decoder = any(k.startswith("decoder.") for k in tensors)
        for prefix, module in (("encoder.", self.encoder), ("decoder.", self.decoder)):
            sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if module is self.decoder and not self.has_decoder:
                continue
            try:
                module.load_state_dict(sub)
            except RuntimeError as exc:
                raise ValueError(f"SSBA weights {path} do not fit bits={self.options.bits}, "
                                 f"width={self.options.width}, size={self.image_size}: {exc}") from None
        self.encoder.eval()
        self.decoder.eval()
        self._fitted = True

    # -------------------------------------------------------------- trigger
    @torch.no_grad()
    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 256
                      ) -> np.ndarray:
        self.check_images(images)
        if not self._fitted:
            raise ValueError("attack 'ssba' has no encoder yet: call fit(train_images, labels) or set "
                             "options.ssba.encoder_path")
        out = np.empty_like(images)
        bits = torch.from_numpy(self.fingerprint)[None]
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size].astype(np.float32)).permute(0, 3, 1, 2) / 255
            enc = self.encode01(x, bits.expand(len(x), -1))
            out[i : i + batch_size] = truncate_to_uint8(enc.permute(0, 2, 3, 1).double().numpy() * 255)
        return out

    @torch.no_grad()
    def decode_bits(self, images: np.ndarray) -> np.ndarray:
        """Decoded {0, 1} bits (N, bits) of uint8 images."""
        if not self.has_decoder:
            raise ValueError("this SSBA state has no decoder (a victim store keeps only the encoder the trigger "
                             "needs): load the attack run's state/ to decode bits")
        x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2) / 255
        return (self.decoder(x) > 0).numpy().astype(np.uint8)
