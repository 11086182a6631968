"""Inference-time guard: detoxify inputs, then ask a black-box classifier for labels.

``Detoxifier(classifier, defense, batch_size)`` accepts as ``classifier``

* a ``torch.nn.Module`` -- called on float32 NCHW batches in [0, 1] (normalisation lives inside the model),
  logits are arg-maxed;
* any other Python callable -- called on uint8 NHWC numpy batches (what a black box is sent), returning labels
  (N,) or scores (N, K) that are arg-maxed;
* an ``http://`` / ``https://`` URL (or an :class:`HttpClassifier`) -- a detoxops guard endpoint: the batch is
  POSTed under the served guard's contract (:mod:`detoxops.serving`, docs/security.md) as a ``.npy`` body or as
  MLflow-style JSON ``{"inputs": [...]}``, the reply is ``{"predictions": [...]}``. The same client talks to
  ``python -m tasks.serve_guard`` and to ``mlflow models serve`` of the guard model (JSON wire).

Detoxified images are quantised to uint8 (rounding, as ``detoxops.data.from_tensor``) before they reach the
classifier, as they would be on the wire, so a module and its HTTP deployment see the same pixels. Images are
processed ``batch_size`` at a time; with a memory-mapped input only one batch is in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from detoxops.data import from_tensor, to_tensor
from detoxops.defenses.base import Defense, NoDefense
from detoxops.progress import tqdm
from detoxops.serving import HttpClassifier

__all__ = ["Detoxifier", "HttpClassifier"]  # HttpClassifier: the serving contract's client, re-exported

def _module_classifier(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    device = next(model.parameters(), torch.empty(0)).device

    @torch.no_grad()
    def classify(images_u8: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            return model(to_tensor(images_u8, device=device)).argmax(dim=1).cpu().numpy()
        finally:
            model.train(was_training)

    return classify


def _as_labels(out, n: int, where: str) -> np.ndarray:
    arr = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    if arr.ndim == 2:
        arr = arr.argmax(axis=1)
    if arr.shape != (n,):
        raise ValueError(f"{where}: expected {n} labels (or an (N, K) score array), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{where}: labels must be integers, got {arr.dtype}")
    return arr.astype(np.int64)


class Detoxifier:
    """``Detoxifier(classifier, defense, batch_size).predict(images) -> labels`` on detoxified inputs."""

    def __init__(
        self,
        classifier,
        defense: Defense | None = None,
        batch_size: int = 256,
        *,
        progress: bool = False,
        http_wire: str = "npy",
        http_timeout: float = 60.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Detoxifier: batch_size must be >= 1, got {batch_size}")
        if isinstance(classifier, str):
            classifier = HttpClassifier(classifier, wire=http_wire, timeout=http_timeout)
        if isinstance(classifier, torch.nn.Module):
            self._classify = _module_classifier(classifier)
        elif callable(classifier):
            self._classify = classifier
        else:
            raise ValueError(
                f"Detoxifier: classifier must be a torch module, a callable or a URL, got {classifier!r}"
            )
        self.classifier = classifier
        self.defense = defense if defense is not None else NoDefense()
        self.batch_size = int(batch_size)
        self.progress = progress

    @classmethod
    def from_params(cls, classifier, purifier, cfg, **kwargs) -> Detoxifier:
        """The platform's guard: SampDetox with ``cfg`` (a :class:`SampDetoxConfig`; its profile, default robust).
        The guarded classifier is also the black box the patch repair's label confirmation queries
        (``sampdetox.patch.confirm: label``), through the same client (HTTP settings included)."""
        from detoxops.defenses.sampdetox import SampDetox

        guard = cls(classifier, None, batch_size=cfg.batch_size, **kwargs)
        guard.defense = SampDetox(purifier, cfg, classifier=guard._classify)
        return guard

    def batches(self, images: np.ndarray, with_maps: bool = False):
        """Yield (start, uint8 detoxified batch) pairs -- or (start, batch, maps) with ``with_maps`` -- for
        ``images`` uint8 (N, H, W, C), memory-mapped or not. ``maps``: the defense's named maps as numpy."""
        images = _check_images(images)
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(
            starts, desc=f"detox {getattr(self.defense, 'name', 'defense')}", disable=not self.progress
        ):
            chunk = np.array(images[start : start + self.batch_size])  # a copy: memmaps are read-only
            with torch.no_grad():
                out = self.defense(to_tensor(chunk))
            detoxed = from_tensor(out.images)
            if with_maps:
                yield start, detoxed, {k: v.detach().cpu().numpy() for k, v in out.maps.items()}
            else:
                yield start, detoxed

    def predict_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(labels, maps): ``predict`` plus the defense's per-pixel maps concatenated over the batches."""
        images = _check_images(images)
        labels = np.empty(len(images), dtype=np.int64)
        parts: dict[str, list[np.ndarray]] = {}
        for start, batch, maps in self.batches(images, with_maps=True):
            labels[start : start + len(batch)] = _as_labels(self._classify(batch), len(batch), "classifier")
            for k, v in maps.items():
                parts.setdefault(k, []).append(v)
        return labels, {k: np.concatenate(v) for k, v in parts.items()}

    def detoxify(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) detoxified copies."""
        images = _check_images(images)
        out = np.empty_like(np.asarray(images[:0]), shape=images.shape)
        for start, batch in self.batches(images):
            out[start : start + len(batch)] = batch
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        """int64 (N,) labels the classifier gives the detoxified images."""
        images = _check_images(images)
        labels = np.empty(len(images), dtype=np.int64)
        for start, batch in self.batches(images):
            labels[start : start + len(batch)] = _as_labels(self._classify(batch), len(batch), "classifier")
        return labels

    __call__ = predict

    def check_drift(self, clean_images: np.ndarray, num_classes: int, max_inflow: float | None = None):
        """:func:`detoxops.defenses.drift.label_drift` of this guard on clean images of the deployment domain: the
        classifier's labels of the raw images against its labels of the detoxified ones (no ground truth needed).
        A flagged drift means the defense sends clean inputs to one class -- it fires a backdoor itself."""
        from detoxops.defenses.drift import DEFAULT_MAX_INFLOW, label_drift

        clean_images = _check_images(clean_images)
        before = np.concatenate([
            _as_labels(self._classify(np.array(clean_images[i : i + self.batch_size])),
                       len(clean_images[i : i + self.batch_size]), "classifier")
            for i in range(0, len(clean_images), self.batch_size)])
        after = self.predict(clean_images)
        return label_drift(before, after, num_classes, DEFAULT_MAX_INFLOW if max_inflow is None else max_inflow)


def _check_images(images) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"Detoxifier expects uint8 images of shape (N, H, W, C), got {got}")
    return images
