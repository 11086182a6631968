"""Registry of attacks: one module per attack registers its class with :func:`register`."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from detoxops.attacks.base import Attack

# Module names under detoxops.attacks, imported on first use so that importing the registry stays cheap.
ATTACK_MODULES: tuple[str, ...] = (
    "badnets", "blended", "sig", "lc", "trojannn", "inputaware", "lf",
    "wanet", "ssba", "bpp", "ftrojan", "lira", "refool",
    "badnets_random",  # detoxops's adaptive check, not one of the papers' 13
)

_REGISTRY: dict[str, type[Attack]] = {}
_loaded = False


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ``@register`` on an :class:`Attack` subclass with a unique ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"attack {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in ATTACK_MODULES:
        try:
            importlib.import_module(f"detoxops.attacks.{mod}")
        except ModuleNotFoundError as exc:  # module not written yet
            if exc.name != f"detoxops.attacks.{mod}":
                raise
    _loaded = True


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type[Attack]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown attack {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def validate_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming the key when ``options`` do not fit attack ``name``."""
    cls = get(name)
    try:
        cls.Options(**options)
    except Exception as exc:  # pydantic ValidationError → a message naming the attack
        raise ValueError(f"options.{name}: {exc}") from None


def create(name: str, **kwargs: Any) -> Attack:
    """Instantiate attack ``name`` with ``target``, ``poison_ratio``, ``seed``, ``image_size``, ``num_classes``,
    ``options``."""
    return get(name)(**kwargs)


def from_record(folder: str | Path) -> Attack:
    """The attack recorded in ``folder`` (``attack.json`` as ``detoxops attack run`` writes it, and its fitted
    ``state/`` for attacks that fit): a poisoned set's or a stored victim's attack, rebuilt."""
    folder = Path(folder)
    file = folder / "attack.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: no attack.json (not an attack output folder)")
    record = json.loads(file.read_text())
    attack = create(record["name"], target=record["target"], poison_ratio=record["poison_ratio"], seed=record["seed"],
                    image_size=record["image_size"], num_classes=record["num_classes"], options=record["options"],
                    jpeg_quality=record.get("jpeg_quality"))
    # A stored victim's record of an attack whose state is training-only (LC) carries no state/: nothing to load.
    if attack.needs_fit and (attack.trigger_uses_state or (folder / "state").is_dir()):
        attack.load_state(folder / "state")
    return attack
