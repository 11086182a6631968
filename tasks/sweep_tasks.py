"""Defense evaluation on a validation / held-out split of the test set (parameter sweeps and their final check);
the split rule is :func:`detoxops.defenses.evaluation.split_eval_sets`."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["evaluate_point", "evaluate_point_fn", "grid_points", "point_label"]


def evaluate_point_fn(
    poisoned_version: str,
    victim_path: str,
    purifier_path: str | None,
    attack_cfg: dict[str, Any],
    sampdetox_cfg: dict[str, Any],
    defense: str,
    split: str,
    val_fraction: float,
    split_seed: int,
    max_images: int | None = None,
) -> dict[str, Any]:
    """CA / PA / ASR (%) of ``defense`` configured by ``sampdetox_cfg`` on ``split`` (``val`` | ``test``)."""
    from detoxops.config import SampDetoxConfig
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.evaluation import evaluate_defense, split_eval_sets
    from detoxops.devices import resolve_device
    from detoxops.models import load_classifier
    from tasks.attack_tasks import load_test_splits

    device = str(resolve_device())
    clean, triggered, attack = load_test_splits(poisoned_version, attack_cfg)
    data = split_eval_sets(clean, triggered, attack_cfg["target"], val_fraction, split_seed, attack=attack)[split]
    data = data.at_most(max_images, split_seed)
    cfg = SampDetoxConfig(**sampdetox_cfg)
    purifier = None
    if defense != "none" and purifier_path:
        from detoxops.diffusion import load_purifier

        purifier = load_purifier(purifier_path, device=device)
    classifier = load_classifier(victim_path).to(device).eval()
    row = evaluate_defense(classifier, build_defense(defense, purifier, cfg, classifier=classifier), data,
                           batch_size=cfg.batch_size,
                           name=defense)
    row.update(split=split, attack=attack_cfg["name"])
    return {k: (float(v) if isinstance(v, np.floating | float) else v) for k, v in row.items()}


evaluate_point = task(name="sweep-point", cache_policy=HEAVY_CACHE, result_serializer="json")(evaluate_point_fn)
"""Cached :func:`evaluate_point_fn` (inputs + code version)."""


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of ``{"t1": [10, 20], "t2": [80]}`` in key order → ``[{"t1": 10, "t2": 80}, …]``."""
    import itertools

    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def point_label(point: dict[str, Any]) -> str:
    """``t1=10,t2=80`` (the setting name used in selection rows and run names)."""
    return ",".join(f"{k}={v}" for k, v in point.items()) or "params"
