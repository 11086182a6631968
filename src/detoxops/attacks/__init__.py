"""detoxops.attacks — the 13 BackdoorBench attacks behind one registry.

``registry.create(name, target=, poison_ratio=, seed=, image_size=, num_classes=, options=)`` builds an attack;
``poison_datasets(attack, train, test)`` gives its poisoned training set and triggered test set;
``detoxops.attacks.visibility`` (``visibility``, ``robustness``) measures SampDetox's v and η_r.
Heavy modules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from detoxops.attacks.base import Attack, AttackOptions, truncate_to_uint8
from detoxops.attacks.registry import available, create, get, register, validate_options

__all__ = [
    "Attack",
    "AttackOptions",
    "available",
    "create",
    "get",
    "poison_datasets",
    "register",
    "truncate_to_uint8",
    "validate_options",
]

_LAZY = {
    "poison_datasets": "detoxops.attacks.poisoning",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detoxops.attacks' has no attribute {name!r}")
