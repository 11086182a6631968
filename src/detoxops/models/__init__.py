"""Victim classifiers and their training / inference.

Every classifier takes float NCHW in [0, 1] (normalisation is inside), returns logits, and exposes
``features(x)`` (penultimate layer, used by DataElixir's feature-space distance).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from detoxops.models.base import Classifier
from detoxops.models.fast_cnn import FastCNN
from detoxops.models.io import load_classifier, read_classifier_config, save_classifier
from detoxops.models.preact_resnet import PreActResNet18
from detoxops.models.resnet import ResNet34
from detoxops.models.small_cnn import SmallCNN
from detoxops.models.train import random_crop_flip, resolve_device, train_classifier
from detoxops.models.tta import TTAClassifier, tta_logits
from detoxops.models.vgg import VGG19BN
from detoxops.seeding import seeded

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "build_classifier",
    "build_victim",
    "train_classifier",
    "predict",
    "predict_logits",
    "extract_features",
    "save_classifier",
    "load_classifier",
    "read_classifier_config",
    "random_crop_flip",
    "resolve_device",
    "tta_logits",
    "TTAClassifier",
]

ARCHITECTURES = {
    "small_cnn": SmallCNN,
    "fast_cnn": FastCNN,
    "preact_resnet18": PreActResNet18,
    "resnet34": ResNet34,
    "vgg19": VGG19BN,
}


def build_classifier(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    seed: int = 0,
    width: int | None = None,
    widths: list[int] | tuple[int, ...] | None = None,
) -> Classifier:
    """A freshly initialised classifier; the initial weights are fixed by ``seed`` (global RNG untouched).
    ``width`` sets ``small_cnn``'s base channel count (default 32), ``widths`` ``fast_cnn``'s three group widths
    (default 64 / 256 / 256)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown classifier arch {arch!r}; available: {', '.join(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    extra: dict = {}
    if arch == "small_cnn" and width is not None:
        extra = {"width": int(width)}
    elif arch == "fast_cnn" and widths is not None:
        extra = {"widths": [int(w) for w in widths]}
    with seeded(seed):
        model = ARCHITECTURES[arch](num_classes=num_classes, in_channels=in_channels, **extra)
    model.detoxops_spec = {
        "arch": arch, "num_classes": int(num_classes), "in_channels": int(in_channels), "image_size": int(image_size),
        **extra,
    }
    return model


def build_victim(cfg, num_classes: int, in_channels: int = 3, image_size: int = 32) -> Classifier:
    """The classifier ``params.victim`` describes (arch — ``auto`` resolved for ``image_size`` —, widths, seed)."""
    cfg = cfg.for_image_size(image_size)
    return build_classifier(cfg.arch, num_classes, in_channels, image_size, seed=cfg.seed, width=cfg.width,
                            widths=cfg.airbench.widths)


def _as_batch_tensor(images: np.ndarray | Tensor) -> Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
        with warnings.catch_warnings():
            # stored image sets are read-only memory maps; the uint8 tensor is only ever sliced and converted to
            # float (a copy), never written, so wrapping it without a copy is safe — and torch's warning noise
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if images.ndim != 4:
        raise ValueError(f"expected a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    return images


def _batches(model: nn.Module, images: np.ndarray | Tensor, batch_size: int, fn) -> Tensor:
    x = _as_batch_tensor(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            xb = xb.float().div(255.0) if xb.dtype == torch.uint8 else xb.float()
            outs.append(fn(xb.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0)


def predict_logits(model: nn.Module, images: np.ndarray | Tensor, batch_size: int = 512, tta: int = 0) -> Tensor:
    """Logits for uint8 NHWC arrays or float [0, 1] NCHW tensors, in bounded-memory batches; ``tta`` > 0
    averages over test-time augmentation views (:func:`tta_logits`)."""
    return _batches(model, images, batch_size, model if tta == 0 else lambda xb: tta_logits(model, xb, tta))


def predict(model: nn.Module, images: np.ndarray | Tensor, batch_size: int = 512, tta: int = 0) -> np.ndarray:
    """Predicted labels (int64)."""
    logits = predict_logits(model, images, batch_size, tta)
    return logits.argmax(1).numpy().astype(np.int64) if len(logits) else np.zeros(0, dtype=np.int64)


def extract_features(model: nn.Module, images: np.ndarray | Tensor, batch_size: int = 512) -> Tensor:
    """Penultimate-layer features (``model.features``)."""
    return _batches(model, images, batch_size, model.features)
