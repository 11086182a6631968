"""Shared pieces of the victim classifiers: input normalisation inside the model and the features hook."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# BackdoorBench's CIFAR-10 normalisation (also used by SampDetox's evaluation).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)


class Classifier(nn.Module):
    """Base class: ``forward(x01)`` takes float NCHW in [0, 1] and returns logits; the normalisation lives
    inside, so a black-box caller never needs to know it. ``features(x01)`` returns penultimate features."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        mean = CIFAR_MEAN if in_channels == 3 else (0.5,) * in_channels
        std = CIFAR_STD if in_channels == 3 else (0.5,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def normalise(self, x01: Tensor) -> Tensor:
        return (x01 - self.mean) / self.std

    def embed(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Penultimate features of a *normalised* batch."""
        raise NotImplementedError

    def features(self, x01: Tensor) -> Tensor:
        return self.embed(self.normalise(x01))

    def forward(self, x01: Tensor) -> Tensor:
        return self.head(self.features(x01))
