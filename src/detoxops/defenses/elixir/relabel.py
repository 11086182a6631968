"""Labels of the suspicious target-label samples (DataElixir, "Purified Dataset Generation", last paragraph):
a benign model trained on the current purified set predicts y_m; where it agrees with the candidate vote y_v
the sample joins the purified set; the model is fine-tuned on it with a lower learning rate and labels the rest."""

from __future__ import annotations

import copy

import numpy as np
from torch import nn

from detoxops.config import VictimConfig
from detoxops.data import ImageSet
from detoxops.models import build_classifier, predict, train_classifier


def relabel_suspicious(
    purified: ImageSet,
    suspicious_images: np.ndarray,
    votes: np.ndarray,
    arch: str,
    cfg: VictimConfig,
    finetune_epochs: int,
    finetune_lr_scale: float,
    progress: bool = False,
    query_images: np.ndarray | None = None,
    init: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels of the suspicious samples, whether each agreed in the first stage). The model is asked about
    ``query_images`` (default: the suspicious images themselves, the paper) — e.g. the samples' input images when
    it was trained on purified candidates; agreed samples join its fine-tuning set as ``suspicious_images``.
    With ``init`` (the victim) the first stage fine-tunes a copy of it for ``cfg.epochs`` at ``finetune_lr_scale``
    of the recipe's rate instead of training a model from random weights; ``init`` itself is left untouched."""
    query = suspicious_images if query_images is None else query_images
    if len(query) != len(suspicious_images):
        raise ValueError(f"query_images has {len(query)} images for {len(suspicious_images)} suspicious samples")
    if len(suspicious_images) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    if init is None:
        model = build_classifier(arch, purified.num_classes, purified.images.shape[-1], purified.images.shape[1],
                                 seed=cfg.seed, width=cfg.width, widths=cfg.airbench.widths)
        train_classifier(model, purified, cfg, progress=progress)
    else:
        model = copy.deepcopy(init)
        train_classifier(model, purified, cfg, progress=progress, epochs=cfg.epochs, lr=cfg.lr * finetune_lr_scale)
    y_m = predict(model, query)
    agree = y_m == votes
    if agree.any():
        extended = ImageSet(
            images=np.concatenate([np.asarray(purified.images), suspicious_images[agree]]),
            labels=np.concatenate([purified.labels, votes[agree]]),
            class_names=purified.class_names,
        )
        train_classifier(model, extended, cfg, progress=progress, epochs=finetune_epochs,
                         lr=cfg.lr * finetune_lr_scale)
    labels = np.where(agree, votes, predict(model, query))
    return labels.astype(np.int64), agree
