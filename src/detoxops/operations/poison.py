"""Poison: the configured attack applied to a dataset's splits (BackdoorBench's protocol).

The one implementation behind ``detoxops attack run`` (the ``poison`` stage of ``dvc.yaml``) and the Prefect task
``tasks.attack_tasks.poison_dataset``. Artifacts: the poisoned training set, the triggered (non-target) test set,
and the attack's fitted state, either as an output folder (``train/``, ``test/``, ``state/``, ``attack.json``:
what ``detoxops victim train --poisoned`` reads) or as a dataset version (``train``, ``test``, ``clean_test`` splits
and ``attack_state/``: what the tasks pass on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detoxops.attacks import registry
from detoxops.config import AttackConfig
from detoxops.data import ImageSet
from detoxops.fileio import atomic_dir

__all__ = ["PoisonOutcome", "build_attack", "poison"]

STATE_DIR = "attack_state"  # beside a poisoned dataset version


def build_attack(cfg: AttackConfig, image_size: int, num_classes: int):
    """The configured attack (``params.attack``, its ``options.<name>``) for images of ``image_size`` px."""
    return registry.create(cfg.name, target=cfg.target, poison_ratio=cfg.poison_ratio, seed=cfg.seed,
                           image_size=int(image_size), num_classes=num_classes,
                           options=cfg.options.get(cfg.name, {}), jpeg_quality=cfg.jpeg_quality)


@dataclass(frozen=True)
class PoisonOutcome:
    """The attack (fitted where it fits), the poisoned training set and the triggered test set, and where they
    were stored (``out`` folder and / or ``version``)."""

    attack: Any
    train: ImageSet
    test: ImageSet
    record: dict[str, Any] = field(repr=False)
    out: Path | None = None
    version: Path | None = None


def poison(train: ImageSet, test: ImageSet, cfg: AttackConfig, *, surrogate=None, out: str | Path | None = None,
           overwrite: bool = False, version_root: str | Path | None = None, version_name: str | None = None,
           source: str = "", progress: bool = True) -> PoisonOutcome:
    """Apply ``cfg``'s attack: fit it first where it fits on data (``needs_fit``; an attack that fits on a model
    gets ``surrogate``, a clean classifier, and is left unfitted without one), then
    :func:`detoxops.attacks.poison_datasets`. With ``out`` the sets, the attack's state and ``attack.json`` are
    written there in one atomic step; with ``version_root`` they are stored as the version
    ``<root>/<version_name>/<hash12>/`` (the clean test split included, the state in ``attack_state/``)."""
    from detoxops.attacks.poisoning import poison_datasets

    out = None if out is None else Path(out)
    if out is not None and out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --force / overwrite=True to replace it)")
    attack = build_attack(cfg, train.image_shape[0], train.num_classes)
    if attack.needs_fit and not attack.is_fitted and (surrogate is not None or not attack.needs_model):
        attack.fit(train.images, train.labels, **({"model": surrogate} if attack.needs_model else {}),
                   progress=progress)
    poisoned_train, triggered_test = poison_datasets(attack, train, test)
    record = attack.describe() | {
        "data_source": source,
        "train": {"num_samples": len(poisoned_train), "num_poisoned": int(poisoned_train.poisoned.sum()),
                  "content_hash": poisoned_train.content_hash()},
        "test": {"num_samples": len(triggered_test), "content_hash": triggered_test.content_hash()},
    }
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            poisoned_train.save(tmp / "train")
            triggered_test.save(tmp / "test")
            state = attack.save_state(tmp / "state") if attack.needs_fit else []
            record |= {"state_files": [p.name for p in state], "fit_report": getattr(attack, "fit_report", {})}
            (tmp / "attack.json").write_text(json.dumps(record, indent=2) + "\n")
    else:
        record |= {"fit_report": getattr(attack, "fit_report", {})}
    version = None
    if version_root is not None:
        from detoxops.data import save_version

        version = save_version({"train": poisoned_train, "test": triggered_test, "clean_test": test}, version_root,
                               version_name or f"poisoned-{cfg.name}", source=source)
        state_dir = version / STATE_DIR
        if not state_dir.exists():
            with atomic_dir(state_dir) as tmp:
                attack.save_state(tmp)
    return PoisonOutcome(attack=attack, train=poisoned_train, test=triggered_test, record=record, out=out,
                         version=version)
