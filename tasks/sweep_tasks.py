"""Defense evaluation on a validation / held-out split of the test set (parameter sweeps and their final check);
the split rule is :func:`detoxops.defenses.evaluation.split_eval_sets`."""

from __future__ import annotations

from typing import Any

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
    """CA / PA / ASR (percent) of ``defense`` configured by ``sampdetox_cfg`` on ``split`` (``val`` | ``test``):
    :func:`detoxops.operations.evaluate_split` with one defense."""
    from detoxops.config import DataConfig, Params, SampDetoxConfig
    from detoxops.metrics import percent_rates
    from detoxops.models import load_classifier
    from detoxops.operations import evaluate_split
    from tasks.attack_tasks import load_test_splits

    clean, triggered, attack = load_test_splits(poisoned_version, attack_cfg)
    params = Params(sampdetox=SampDetoxConfig(**sampdetox_cfg),
                    data=DataConfig(val_fraction=val_fraction, seed=split_seed))
    outcome = evaluate_split(clean, triggered, attack_cfg["target"], load_classifier(victim_path), params, split,
                             [defense], attack_name=attack_cfg["name"], attack=attack,
                             purifier=purifier_path if defense != "none" else None, max_images=max_images)
    row = {k: v for k, v in outcome.rows[0].items() if k != "ca_drop"}  # one defense: no baseline to drop from
    # percent: the sweep's selection rule and tables work in points (sweep.max_ca_drop)
    return {**percent_rates(row), "split": split, "attack": attack_cfg["name"]}


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
