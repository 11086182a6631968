"""Shared scaffolding of the attacks that train a trigger generator jointly with an attacker-side classifier
(Input-Aware, LIRA): the fit images, the attacker classifier, its scores, loss summaries and the safetensors state.

Only the plumbing lives here; each attack's training loop (its losses, optimisers and schedule) stays in its own
module.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from detoxops.attacks.base import AttackOptions
from detoxops.attacks.loop import LoopAttack
from detoxops.seeding import seeded

ClassifierArch = Literal["small_cnn", "preact_resnet18", "resnet34", "vgg19"]


class GeneratorOptions(AttackOptions):
    """The options :class:`GeneratorAttack` itself reads (the attacker classifier, the fit images, the device, a
    saved state); each attack's options add its networks' and training loop's."""

    classifier_arch: ClassifierArch = "small_cnn"
    """Attacker-side classifier of the joint stage when ``fit`` gets no ``model``."""
    classifier_width: int = Field(default=16, ge=4)
    max_train_images: int | None = Field(default=5000, ge=1)
    """Training images the generators are fitted on (random subset, CPU scale); ``None`` = all."""
    device: str = "cpu"
    """Device of the attacker's training (weights are kept on the CPU afterwards)."""
    state_path: str | None = None
    """A saved ``state/`` folder (or the .safetensors file); skips fitting."""


class GeneratorAttack(LoopAttack):
    """A loop attack whose trigger networks :meth:`fit` trains: built by :meth:`build_networks` from the attack
    seed (the global RNG is left as it was), or loaded from ``options.state_path`` when that is set; saved as
    one safetensors file ``weights_file`` of the :meth:`state_modules`."""

    needs_fit: ClassVar[bool] = True
    networks: ClassVar[str] = "generator"
    """What the trained networks are called in messages ("generator", "generators")."""
    weights_file: ClassVar[str]
    weights_label: ClassVar[str]
    """The attack's name in messages about its weights file ("Input-Aware", "LIRA")."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        with seeded(self.seed):
            self.build_networks()
        self._fitted = False
        self.fit_report: dict[str, Any] = {}
        if self.options.state_path:
            self.load_state(self.options.state_path)

    @abstractmethod
    def build_networks(self) -> None:
        """Create the untrained networks (in eval mode) from the global RNG, seeded by the caller."""

    @abstractmethod
    def state_modules(self) -> dict[str, nn.Module]:
        """The networks :meth:`save_state` keeps, by key prefix."""

    @abstractmethod
    def state_metadata(self) -> dict[str, str]:
        """Metadata of the weights file (the sizes the networks were built with)."""

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise ValueError(f"attack '{self.name}' has no trained {self.networks} yet: call fit(train_images, "
                             f"train_labels) or set options.{self.name}.state_path to a saved state/ folder")

    # -------------------------------------------------------------- fitting
    def fit(self, train_images: np.ndarray, train_labels: np.ndarray, model: nn.Module | None = None,
            progress: bool = True, **resources: Any) -> None:
        """:meth:`train_networks` on the checked fit images with the attacker classifier (``model``, trained in
        place, or a fresh ``options.classifier_arch``) on ``options.device``; nothing with ``options.state_path``.
        """
        if self.options.state_path:
            return
        data, ys = self.fit_data(train_images, train_labels)
        dev = torch.device(self.options.device)
        with self.attacker_classifier(model, dev) as clf:
            report = self.train_networks(data, ys, clf, dev, progress)
        self.fit_report = {"fit_images": int(len(data)), **report}

    @abstractmethod
    def train_networks(self, data: torch.Tensor, ys: torch.Tensor, clf: nn.Module, dev: torch.device,
                       progress: bool) -> dict[str, Any]:
        """The attack's own training of its networks with ``clf`` on ``data`` (float [0, 1] NCHW, labels ``ys``),
        leaving them in eval mode on the CPU and ``_fitted`` set; returns the fit report."""

    def fit_data(self, train_images: np.ndarray, train_labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the training set and pick the images to fit on: (float [0, 1] NCHW images, int64 labels) of
        :func:`fit_pool` with ``options.max_train_images``."""
        self.check_images(train_images)
        labels = np.asarray(train_labels)
        if labels.shape != (len(train_images),):
            raise ValueError(f"train_labels must have shape ({len(train_images)},), got {labels.shape}")
        if len(train_images) < 2:
            raise ValueError(f"attack '{self.name}' needs at least 2 training images to fit its {self.networks}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"train_labels must lie in [0, {self.num_classes})")
        pick = fit_pool(train_images, self.options.max_train_images, self.seed)
        return to01(train_images[pick]), torch.from_numpy(labels[pick].astype(np.int64))

    @contextmanager
    def attacker_classifier(self, model: nn.Module | None, device: torch.device) -> Iterator[nn.Module]:
        """The classifier of the joint stage on ``device``: ``model`` (trained in place) or a fresh
        ``options.classifier_arch`` built from the attack seed (the global RNG is left as it was). On exit it
        goes back to its device and train / eval mode."""
        o: Any = self.options
        with seeded(self.seed):
            clf = attacker_classifier(model, o.classifier_arch, o.classifier_width, self.num_classes,
                                      self.image_size, self.seed)
        was_training = clf.training
        clf_dev = next((p.device for p in clf.parameters()), device)
        clf.to(device)
        try:
            yield clf
        finally:
            clf.to(clf_dev)
            clf.train(was_training)

    # -------------------------------------------------------------- state
    def save_state(self, folder: str | Path) -> list[Path]:
        if not self._fitted:
            raise ValueError(f"attack '{self.name}' is not fitted: nothing to save")
        return [save_modules(Path(folder) / self.weights_file, self.state_modules(), self.state_metadata())]

    def load_state(self, folder: str | Path) -> None:
        path = Path(folder)
        load_modules(path / self.weights_file if path.is_dir() else path, self.state_modules(), self.weights_label)
        self._fitted = True


def to01(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float32 [0, 1] NCHW."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2).div(255)


def network_depth(size: int, depth: int | None, bottleneck: int, option: str, networks: str) -> int:
    """Down-sampling steps by 2 of an encoder: ``depth`` (option ``option``), or by default so that the
    bottleneck is ``bottleneck`` px (at least 1, fewer where the side does not divide by 2^depth); the side
    must divide by 2^depth."""
    lv = depth if depth is not None else max(1, int(math.log2(size / bottleneck)))
    if size % 2**lv:
        if depth is not None:
            raise ValueError(f"image size {size} is not divisible by 2^{lv} ({option} = {lv})")
        while lv > 1 and size % 2**lv:
            lv -= 1
        if size % 2**lv:
            raise ValueError(f"image size {size} must be even for {networks}")
    return lv


def fit_pool(images: np.ndarray, max_images: int | None, seed: int) -> np.ndarray:
    """Indices of the training images an attacker fits on (all, or a seeded random subset, in order)."""
    n = len(images)
    if max_images is None or n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))


def attacker_classifier(model: nn.Module | None, arch: str, width: int, num_classes: int, size: int,
                        seed: int) -> nn.Module:
    if model is not None:
        return model
    from detoxops.models import build_classifier

    return build_classifier(arch, num_classes=num_classes, in_channels=3, image_size=size, seed=seed, width=width)


def attacker_scores(clf: nn.Module, x: torch.Tensor, x_bd: torch.Tensor, y: torch.Tensor, target: int,
                    device: torch.device) -> dict[str, float]:
    """The attacker classifier's clean accuracy on ``x`` and ASR on the non-target samples of ``x_bd``."""
    pred_clean = clf(x.to(device)).argmax(1).cpu()
    pred_bd = clf(x_bd.to(device)).argmax(1).cpu()
    keep = y != target
    return {"attacker_clean_acc": float((pred_clean == y).float().mean()),
            "attacker_asr": float((pred_bd[keep] == target).float().mean()) if keep.any() else 0.0}


def recent_mean(history: Sequence[Sequence[float]], i: int, last: int = 20) -> float | None:
    """Mean of entry ``i`` over the ``last`` records of a loss history (None when it is empty)."""
    return float(np.mean([v[i] for v in history[-last:]])) if history else None


def save_modules(path: Path, modules: dict[str, nn.Module], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous()
               for prefix, module in modules.items() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_modules(path: Path, modules: dict[str, nn.Module], what: str) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what} weights {path}: not a readable safetensors file: {exc}") from None
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(sub)
        except RuntimeError as exc:
            raise ValueError(f"{what} weights {path} do not fit the configured networks: {exc}") from None
        module.eval()
