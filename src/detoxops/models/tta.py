"""Test-time augmentation (airbench's levels): 0 = the plain network, 1 = mean of the image and its mirror,
2 = level 1 averaged with level 1 on the image shifted one pixel up-left and one pixel down-right (reflect
padding), weighted 1/2, 1/4, 1/4 — six forward passes per image.

TTA is part of how a model is *deployed*, not of the weights: evaluation reports it both ways, and the defenses
query whatever forward function they are handed.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

TTA_LEVELS = (0, 1, 2)


def _mirror(model: nn.Module, x: Tensor) -> Tensor:
    return 0.5 * model(x) + 0.5 * model(x.flip(-1))


def tta_logits(model: nn.Module, x01: Tensor, level: int = 0) -> Tensor:
    """Logits of ``model`` on float NCHW ``x01`` averaged over the TTA views of ``level``."""
    if level not in TTA_LEVELS:
        raise ValueError(f"tta level must be one of {TTA_LEVELS}, got {level!r}")
    if level == 0:
        return model(x01)
    logits = _mirror(model, x01)
    if level == 1:
        return logits
    h, w = x01.shape[-2:]
    padded = F.pad(x01, (1, 1, 1, 1), mode="reflect")
    shifted = (_mirror(model, padded[..., :h, :w]) + _mirror(model, padded[..., 2:, 2:])) / 2
    return 0.5 * logits + 0.5 * shifted


class TTAClassifier(nn.Module):
    """A classifier wrapped so that ``forward`` applies TTA of ``level`` (for code that only calls the model)."""

    def __init__(self, model: nn.Module, level: int) -> None:
        super().__init__()
        if level not in TTA_LEVELS:
            raise ValueError(f"tta level must be one of {TTA_LEVELS}, got {level!r}")
        self.model, self.level = model, level

    def forward(self, x01: Tensor) -> Tensor:
        return tta_logits(self.model, x01, self.level)

    def features(self, x01: Tensor) -> Tensor:
        return self.model.features(x01)
