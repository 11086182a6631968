"""Fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest


@pytest.fixture
def interrupted_at_checkpoint():
    """``with interrupted_at_checkpoint(module, n) as calls: train(...)``: the training loop of ``module`` (its
    ``_save_state``) writes each checkpoint, then the n-th raises KeyboardInterrupt, as a process killed right after
    it would stop; the block must end that way. ``calls["n"]``: checkpoints written. The real ``_save_state`` is
    back afterwards."""

    @contextmanager
    def interrupt(module: ModuleType, n: int) -> Iterator[dict[str, int]]:
        calls = {"n": 0}
        real_save = module._save_state

        def save_then_maybe_stop(*args, **kwargs):
            real_save(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt

        module._save_state = save_then_maybe_stop
        try:
            with pytest.raises(KeyboardInterrupt):
                yield calls
        finally:
            module._save_state = real_save

    return interrupt
