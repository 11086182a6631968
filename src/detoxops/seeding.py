"""Seeded use of torch's process-wide RNG that stays deterministic when tasks run in threads.

Prefect's default task runner runs independent tasks (two victims, two attacks) in threads of one process, and
torch has one global CPU generator. ``fork_rng`` + ``manual_seed`` around a network's initialisation is only
deterministic if no other thread draws from or reseeds the global generator in between, so every such block, and
every global reseed, holds one process-wide lock. Sampling in hot paths uses explicit ``torch.Generator``s and
never needs it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["seeded", "seed_global"]

_GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global CPU RNG seeded to ``seed``, restore it afterwards, exclusive across threads."""
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def seed_global(seed: int) -> None:
    """``torch.manual_seed`` without cutting into another thread's :func:`seeded` block."""
    with _GLOBAL_RNG_LOCK:
        torch.manual_seed(int(seed))
