"""Sampling noise keyed by sample: the same image gets the same noise in any batch, shard or dataset.

The samplers draw their noise from a ``torch.Generator`` by default: one ``randn`` of the batch shape per step, so
what a sample receives depends on where it sits in its batch. That is enough to be deterministic, not enough to
*reuse* work: DataElixir purifies the same clean image in every dataset that holds it (a re-scan with a new victim,
the next ingestion batch, the attacks of one benchmark seed), and only batch-independent noise makes one stored
purification valid for all of them. :class:`KeyedNoise` gives each sample a stream of its own, seeded by a key the
caller derives from the sample (DataElixir: a hash of its pixels and ``dataelixir.seed``).

Every sampler that takes ``generator=`` also takes a :class:`KeyedNoise` (:func:`draw_noise` dispatches).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["KeyedNoise", "draw_noise"]


class KeyedNoise:
    """One CPU noise stream per sample, seeded by ``keys[i]`` (integers in ``[0, 2**63)``); draw ``j`` of sample
    ``i`` depends only on its key and ``j``.

    Drawing loops over the samples (one ``randn`` of one sample's shape each): generating the numbers costs the
    same as one batch ``randn``, and the loop adds a few microseconds per sample per draw, against a UNet pass of
    milliseconds per sample. Draws are made on the CPU in float32 and moved to the batch's device and dtype, so a
    key gives the same noise on every device.
    """

    def __init__(self, keys: Sequence[int]) -> None:
        keys = [int(k) for k in keys]
        bad = [k for k in keys if not 0 <= k < 2**63]
        if bad:
            raise ValueError(f"KeyedNoise keys must lie in [0, 2**63), got {bad[:3]}")
        self._generators = [torch.Generator().manual_seed(k) for k in keys]

    def __len__(self) -> int:
        return len(self._generators)

    def randn(self, shape: Sequence[int], device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> Tensor:
        """The next draw of every sample, stacked: ``shape[0]`` must be the number of keys."""
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != len(self._generators):
            raise ValueError(f"KeyedNoise holds {len(self._generators)} keys; asked for noise of shape {shape}")
        per_sample = [torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in self._generators]
        return torch.stack(per_sample).to(device=device, dtype=dtype or torch.float32)


def draw_noise(shape: Sequence[int], generator: torch.Generator | KeyedNoise | None,
               device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """Standard normal noise of ``shape`` from ``generator`` (a ``torch.Generator``, a :class:`KeyedNoise` or
    ``None`` for torch's global one), on ``device`` in ``dtype``."""
    if isinstance(generator, KeyedNoise):
        return generator.randn(shape, device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
