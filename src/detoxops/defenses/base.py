"""The defense interface: ``defense(x01) -> DefenseOutput``.

A defense takes a float32 NCHW batch in [0, 1] (the classifier-input convention) and returns the transformed
batch in [0, 1], plus optional per-pixel maps (trigger likelihood, noise levels) that tracking and the
dashboard show. Defenses that draw randomness take a ``generator``; without one they seed a fresh
generator from their own ``seed`` on every call, so the same batch always gives the same output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

__all__ = ["BlackBox", "DefenseOutput", "Defense", "NoDefense", "check_batch", "make_generator"]


@dataclass
class DefenseOutput:
    """What every defense returns. ``maps`` holds named (B, 1, H, W) maps, e.g. ``trigger_map``."""

    images: torch.Tensor
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Defense(Protocol):
    name: str

    def __call__(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> DefenseOutput: ...


class NoDefense:
    """Identity; the "no defense" row of every table."""

    name = "none"

    def __call__(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> DefenseOutput:
        check_batch(x01)
        return DefenseOutput(images=x01)


def check_batch(x01: torch.Tensor) -> None:
    """Reject anything that is not a float (B, C, H, W) tensor in [0, 1]."""
    if not isinstance(x01, torch.Tensor):
        raise ValueError(f"defense input must be a torch.Tensor, got {type(x01).__name__}")
    if x01.ndim != 4:
        raise ValueError(f"defense input must have shape (B, C, H, W), got {tuple(x01.shape)}")
    if not x01.is_floating_point():
        raise ValueError(
            f"defense input must be float in [0, 1], got {x01.dtype} (use detoxops.data.to_tensor)"
        )
    if x01.numel() and (x01.min() < 0 or x01.max() > 1):
        raise ValueError(
            f"defense input must lie in [0, 1], got [{float(x01.min()):.3f}, {float(x01.max()):.3f}]"
        )


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


class BlackBox:
    """The classifier as a black box: float (B, C, H, W) in [0, 1] -> int64 labels (B,), counting queries.

    ``classifier`` is anything :class:`detoxops.defenses.guard.Detoxifier` accepts (a torch module, a callable on
    uint8 NHWC batches returning labels or scores, a guard URL). Images are quantised to uint8 first, as they
    would be on the wire; only labels come back. ``queries`` counts the images sent.
    """

    def __init__(self, classifier, batch_size: int = 4096) -> None:
        from detoxops.defenses.guard import Detoxifier

        if classifier is None:
            raise ValueError("this defense queries the classifier: pass classifier= (a module, callable or URL)")
        self._guard = Detoxifier(classifier, None, batch_size=batch_size)
        self.queries = 0

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        from detoxops.data import from_tensor

        labels = self._guard.predict(from_tensor(x01.detach().float().cpu()))
        self.queries += len(labels)
        return torch.from_numpy(labels).to(x01.device)
