"""Label-Consistent backdoor (Turner et al. 2019) as in BackdoorBench ``attack/lc.py`` (spec §2.4).

Clean-label: only target-class training images are poisoned (BackdoorBench's ratio semantics, spec §1.3:
``round(ratio·N)`` requested from the target class, so at 0.1 on balanced CIFAR-10 *every* target image).
A poisoned training image is

1. **replaced by an adversarial version of itself**: untargeted L∞ PGD against its true label on a surrogate
   classifier — ``eps`` = 16 grey levels (BackdoorBench ``main`` loads arrays tagged eps 16; its generator script
   ``craft_adv_dataset.py`` uses 8/255: ``eps: 8``), step 1.5 grey levels, 100 steps, no random start, the
   result truncated to uint8;
2. then stamped with the **"all-corners" trigger**: a 3×3 ±1 checkerboard in each corner (top-left and
   bottom-left W B B / B W B / W B W, the right corners mirrored left–right) added as ±255·``amplitude`` to all
   channels, clipped and truncated — with the default amplitude 1 the trigger pixels become exactly 255 / 0.

Test images get the corner trigger only (no adversarial step). The trigger's cells are ``round(S/32)`` px
(at least 1), so the pattern is 3×3 at 16 and 32 px and 6×6 at 64 px (BackdoorBench nearest-resizes its 32-px
annotation instead, which below 32 px keeps an uneven subset of the cells).

BackdoorBench does not ship the adversarial array and made it with an adversarially trained ResNet-18 (hours
of GPU PGD-AT). Here :meth:`LabelConsistent.fit` runs the PGD with the platform's own code on the surrogate passed
as ``model=`` (a clean classifier from ``detoxops.models`` on the CLI, spec §4's "cheaper, non-faithful
alternative"), and only on the training images that will be poisoned (the target class: 10× less than
BackdoorBench's whole-set script). Cost: ``steps`` forward + backward passes over those images; measured numbers
in docs/attacks.md. ``adv_path`` accepts a ready BackdoorBench-style array instead (uint8 ``(N, S, S, 3)``
indexed by training index, e.g. ``preactresnet18_cifar10_16_train.npy``).

The adversarial images belong to specific training images: :meth:`fit` stores them with their indices and a
SHA-256 of the clean source images, and :meth:`poison_train_arrays` refuses other images, labels or poison
settings with a ValueError. :meth:`save_state` writes them as safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import register

STATE_FILE = "lc_adversarial.safetensors"

CORNER = np.array([[1, -1, -1], [-1, 1, -1], [1, -1, 1]], dtype=np.int8)
"""Top-left (and bottom-left) 3×3 cell pattern of BackdoorBench's "all-corners" trigger: +1 white, −1 black."""


class LabelConsistentOptions(AttackOptions):
    eps: float = Field(default=16.0, gt=0.0, le=255.0)
    """PGD L∞ radius in grey levels (BackdoorBench ``main``: 16/255; its generator script: 8/255)."""
    step_size: float = Field(default=1.5, gt=0.0)
    """PGD step in grey levels (1.5/255)."""
    steps: int = Field(default=100, ge=0)
    """PGD iterations (0 = no adversarial step: trigger only)."""
    amplitude: float = Field(default=1.0, ge=0.0, le=1.0)
    """``reduced_amplitude``: trigger cells add ±255·amplitude (1 → exactly 255 / 0; 0 → no trigger)."""
    cell_size: int | None = Field(default=None, ge=1)
    """Side of one trigger cell in pixels; ``None`` = round(S/32), at least 1."""
    adv_path: str | None = None
    """A ready adversarial training array (.npy, uint8 (N, S, S, 3), indexed by training index); skips PGD."""
    batch_size: int = Field(default=256, ge=1)


def image_digest(images: np.ndarray) -> str:
    """SHA-256 of uint8 images (shape and bytes): identifies the clean images an adversarial set was made from."""
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


@register
class LabelConsistent(Attack):
    name: ClassVar[str] = "lc"
    clean_label: ClassVar[bool] = True
    needs_fit: ClassVar[bool] = True
    trigger_uses_state: ClassVar[bool] = False  # the corner trigger is fixed; the PGD images are training-only
    needs_model: ClassVar[bool] = True
    Options: ClassVar[type[AttackOptions]] = LabelConsistentOptions
    options: LabelConsistentOptions

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pattern = self._build_pattern()  # int8 (S, S): +1 / −1 trigger cells, 0 elsewhere
        self.adv_indices: np.ndarray | None = None  # int64 (P,), sorted training indices
        self.adv_images: np.ndarray | None = None  # uint8 (P, S, S, 3): PGD images, no trigger yet
        self.source_digest: str | None = None
        self.num_train: int | None = None
        self.fit_report: dict[str, Any] = {}

    # -------------------------------------------------------------- trigger
    @property
    def cell(self) -> int:
        return self.options.cell_size or self.scale_px(1)

    def _build_pattern(self) -> np.ndarray:
        s, c = self.image_size, self.cell
        block = np.kron(CORNER, np.ones((c, c), dtype=np.int8))  # (3c, 3c)
        side = block.shape[0]
        if 2 * side > s:
            raise ValueError(f"lc trigger: two corner patterns of {side} px ({c} px cells) do not fit side by "
                             f"side in a {s}x{s} image; lower options.lc.cell_size")
        pat = np.zeros((s, s), dtype=np.int8)
        mirrored = block[:, ::-1]
        pat[:side, :side] = block  # top-left
        pat[s - side:, :side] = block  # bottom-left (identical)
        pat[:side, s - side:] = mirrored  # top-right (left–right mirror)
        pat[s - side:, s - side:] = mirrored  # bottom-right
        return pat

    def apply_trigger(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """The corner trigger only (test-time poisoning; training images also get the PGD step first)."""
        self.check_images(images)
        if self.options.amplitude == 0:
            return images.copy()
        add = self.pattern.astype(np.float64)[None, :, :, None] * (255.0 * self.options.amplitude)
        return truncate_to_uint8(images.astype(np.float64) + add)

    def trigger_mask(self, images: np.ndarray) -> np.ndarray:
        self.check_images(images)
        region = self.pattern != 0 if self.options.amplitude > 0 else np.zeros_like(self.pattern, dtype=bool)
        return np.broadcast_to(region, images.shape[:3]).copy()

    # -------------------------------------------------------------- fitting (PGD)
    @property
    def is_fitted(self) -> bool:
        return self.adv_images is not None

    def fit(self, train_images: np.ndarray, train_labels: np.ndarray, model: torch.nn.Module | None = None,
            progress: bool = True, **resources: Any) -> None:
        """Make the adversarial versions of the training images that will be poisoned (the target class)."""
        self.check_images(train_images)
        labels = np.asarray(train_labels)
        if len(labels) != len(train_images):
            raise ValueError(f"attack 'lc': {len(train_images)} images but {len(labels)} labels")
        idx = self.poison_indices(labels)
        source = np.asarray(train_images[idx])
        o = self.options
        if o.adv_path:
            adv = self._read_adv_array(Path(o.adv_path), len(labels))[idx]
            self.fit_report = {"source": str(o.adv_path), "num_images": int(len(idx))}
        elif o.steps == 0 or len(idx) == 0:
            adv = source.copy()
            self.fit_report = {"num_images": int(len(idx)), "steps": 0}
        else:
            if model is None:
                raise ValueError("attack 'lc' needs a surrogate classifier for its PGD step: pass fit(..., "
                                 "model=<torch classifier on [0, 1] NCHW>), set options.lc.adv_path to a ready "
                                 "adversarial array, or options.lc.steps to 0")
            adv, report = self._pgd(model, source, labels[idx], progress)
            self.fit_report = {"num_images": int(len(idx)), "steps": o.steps, "eps": o.eps,
                               "step_size": o.step_size, **report}
        self.adv_indices = idx.astype(np.int64)
        self.adv_images = np.ascontiguousarray(adv, dtype=np.uint8)
        self.source_digest = image_digest(source)
        self.num_train = int(len(labels))

    def _pgd(self, model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
             progress: bool) -> tuple[np.ndarray, dict[str, float]]:
        """Untargeted L∞ PGD against the true labels, on the 0–255 scale (so the truncated result stays
        within ``eps`` grey levels of the clean image), batched; no random start, hence deterministic."""
        o = self.options
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        out = np.empty_like(images)
        correct_before = correct_after = 0
        starts = range(0, len(images), o.batch_size)
        try:
            for start in tqdm(starts, desc="lc: PGD", disable=not progress):
                x = torch.from_numpy(images[start : start + o.batch_size].astype(np.float32))
                x = x.permute(0, 3, 1, 2).to(device)
                y = torch.from_numpy(np.asarray(labels[start : start + o.batch_size], dtype=np.int64)).to(device)
                adv = x.clone()
                for _ in range(o.steps):
                    adv.requires_grad_(True)
                    logits = model(adv / 255.0)
                    loss = F.cross_entropy(logits, y)
                    (grad,) = torch.autograd.grad(loss, adv)
                    with torch.no_grad():
                        adv = adv + o.step_size * grad.sign()
                        adv = torch.minimum(torch.maximum(adv, x - o.eps), x + o.eps).clamp(0, 255)
                with torch.no_grad():
                    correct_before += int((model(x / 255.0).argmax(1) == y).sum())
                    correct_after += int((model(adv / 255.0).argmax(1) == y).sum())
                out[start : start + o.batch_size] = truncate_to_uint8(
                    adv.detach().permute(0, 2, 3, 1).cpu().double().numpy())
        finally:
            model.train(was_training)
        n = max(1, len(images))
        diff = np.abs(out.astype(np.int16) - images.astype(np.int16))
        return out, {"surrogate_accuracy_clean": correct_before / n, "surrogate_accuracy_adv": correct_after / n,
                     "linf_max": int(diff.max()) if diff.size else 0,
                     "l1_mean_per_pixel": float(diff.mean()) if diff.size else 0.0}

    def _read_adv_array(self, path: Path, n: int) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"LC adversarial array not found: {path}")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"LC adversarial array {path}: not a readable .npy array: {exc}") from None
        want = (n, self.image_size, self.image_size, 3)
        if arr.dtype != np.uint8 or arr.shape != want:
            raise ValueError(f"LC adversarial array {path}: {arr.dtype} {arr.shape}, expected uint8 {want} "
                             "(one adversarial image per training image, indexed by training index)")
        return arr

    # -------------------------------------------------------------- datasets
    def adversarial_for(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, adversarial images)`` for this training set; ValueError unless :meth:`fit` saw it."""
        if self.adv_images is None or self.adv_indices is None:
            raise ValueError("attack 'lc' is not fitted: call fit(train_images, train_labels, model=...) on the "
                             "training set first (the PGD images are made per training image)")
        idx = self.poison_indices(labels)
        if len(labels) != self.num_train or not np.array_equal(idx, self.adv_indices):
            raise ValueError(f"attack 'lc' was fitted on another training set or poison selection ({self.num_train} "
                             f"samples, {len(self.adv_indices)} poisoned; now {len(labels)} samples, {len(idx)} "
                             "to poison): fit it again on these images and labels")
        if image_digest(np.asarray(images[idx])) != self.source_digest:
            raise ValueError("attack 'lc': the images to poison differ from those its adversarial versions were "
                             "made from: fit it again on these images")
        return idx, self.adv_images

    def poison_train_arrays(
        self, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target-class images replaced by (PGD image + corner trigger); labels unchanged (clean-label)."""
        self.check_images(images)
        idx, adv = self.adversarial_for(images, labels)
        out_images = np.array(images, copy=True)
        flags = np.zeros(len(labels), dtype=bool)
        if len(idx):
            out_images[idx] = self.apply_trigger(adv)
            flags[idx] = True
        return out_images, np.asarray(labels).astype(np.int64, copy=True), flags

    # -------------------------------------------------------------- state
    def save_state(self, folder: str | Path) -> list[Path]:
        from safetensors.numpy import save_file

        if self.adv_images is None or self.adv_indices is None:
            raise ValueError("attack 'lc' is not fitted: nothing to save")
        path = Path(folder) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"adv_images": self.adv_images, "indices": self.adv_indices}, str(path),
                  metadata={"source_sha256": str(self.source_digest), "num_train": str(self.num_train),
                            "image_size": str(self.image_size)})
        return [path]

    def load_state(self, folder: str | Path) -> None:
        from safetensors import safe_open

        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"LC state not found: {path}")
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            adv, idx = f.get_tensor("adv_images"), f.get_tensor("indices")
        if adv.dtype != np.uint8 or adv.shape[1:] != (self.image_size, self.image_size, 3) or len(adv) != len(idx):
            raise ValueError(f"LC state {path}: adversarial images {adv.dtype} {adv.shape} do not fit "
                             f"{self.image_size}x{self.image_size} RGB with {len(idx)} indices")
        if "source_sha256" not in meta or "num_train" not in meta:
            raise ValueError(f"LC state {path}: metadata lacks source_sha256 / num_train")
        self.adv_images, self.adv_indices = adv, idx.astype(np.int64)
        self.source_digest, self.num_train = meta["source_sha256"], int(meta["num_train"])
