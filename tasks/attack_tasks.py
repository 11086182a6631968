"""Poison a dataset version with an attack and store the result as a new content-addressed version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["poison_dataset", "build_attack", "load_attack_state", "load_test_splits"]


def build_attack(attack_cfg: dict[str, Any], image_size: int, num_classes: int):
    """The configured attack object (``params.attack`` as a dict) for images of ``image_size`` px."""
    from detoxops.config import AttackConfig
    from detoxops.operations.poison import build_attack as build

    return build(AttackConfig(**attack_cfg), image_size, num_classes)


def load_attack_state(attack, version: str):
    """``attack`` with the fitted state saved next to ``version`` (``attack_state/``) loaded, when there is one."""
    state = Path(version) / "attack_state"
    if state.is_dir():
        attack.load_state(state)
    return attack


def load_test_splits(poisoned_version: str, attack_cfg: dict[str, Any]):
    """(clean test ImageSet, triggered test ImageSet, attack with its saved state) of a poisoned version."""
    from detoxops.data import load_version

    splits = load_version(poisoned_version)
    clean, triggered = splits["clean_test"], splits["test"]
    attack = build_attack(attack_cfg, clean.image_shape[0], clean.num_classes)
    return clean, triggered, load_attack_state(attack, poisoned_version)


@task(name="poison", cache_policy=HEAVY_CACHE, result_serializer="json")
def poison_dataset(version: str, attack_cfg: dict[str, Any], root: str) -> dict[str, Any]:
    """Poisoned train + triggered test of ``version`` saved under ``<root>/<dataset>-<attack>/<hash12>``.

    Attacks that need fitting on data (LF, SSBA…) are fitted on the clean training images; their state is saved
    next to the version in ``attack_state/`` so the victim and evaluation tasks reuse the same trigger.
    """
    from detoxops.config import AttackConfig
    from detoxops.data import load_version
    from detoxops.operations import poison

    splits = load_version(version)
    outcome = poison(splits["train"], splits["test"], AttackConfig(**attack_cfg), version_root=root,
                     version_name=f"{Path(version).parent.name}-{attack_cfg['name']}", source=str(version),
                     progress=False)
    path, poisoned_train, triggered_test = outcome.version, outcome.train, outcome.test
    return {
        "path": str(path),
        "hash": Path(path).name,
        "attack": attack_cfg["name"],
        "target": int(attack_cfg["target"]),
        "n_poisoned": int(poisoned_train.poisoned.sum()),
        "n_train": len(poisoned_train),
        "n_triggered_test": len(triggered_test),
    }
