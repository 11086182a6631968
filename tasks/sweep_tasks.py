"""The sweep's Prefect task: one point on one attack's ``val`` or held-out ``test`` split
(:func:`detoxops.operations.sweep.score_setting`, the split rule of
:func:`detoxops.defenses.evaluation.split_eval_sets`), cached; and the scorer that hands a sweep's points to the
flow's task runner (:func:`detoxops.operations.sweep`'s ``score``)."""

from __future__ import annotations

from typing import Any

from prefect import task

from detoxops.operations.sweep import grid_points, point_label
from tasks.caching import HEAVY_CACHE

__all__ = ["evaluate_point", "evaluate_point_fn", "grid_points", "point_label", "task_scorer"]


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
    """CA / PA / ASR (fractions) of ``defense`` configured by ``sampdetox_cfg`` on ``split`` (``val`` | ``test``):
    :func:`detoxops.operations.sweep.score_setting` on the stored poisoned version and victim."""
    from detoxops.config import DataConfig, Params, SampDetoxConfig
    from detoxops.models import load_classifier
    from detoxops.operations.sweep import SweepCase, score_setting
    from tasks.attack_tasks import load_test_splits

    clean, triggered, attack = load_test_splits(poisoned_version, attack_cfg)
    case = SweepCase(attack_cfg["name"], clean, triggered, attack_cfg["target"], load_classifier(victim_path), attack)
    params = Params(sampdetox=SampDetoxConfig(**sampdetox_cfg),
                    data=DataConfig(val_fraction=val_fraction, seed=split_seed))
    return score_setting(case, params, defense, split, purifier=purifier_path, max_images=max_images)


evaluate_point = task(name="sweep-point", cache_policy=HEAVY_CACHE, result_serializer="json")(evaluate_point_fn)
"""Cached :func:`evaluate_point_fn` (inputs + code version)."""


def task_scorer(cases: dict[str, dict[str, Any]], purifier_path: str | None, params, max_images: int | None):
    """A scorer for :func:`detoxops.operations.sweep.sweep` that submits every job as :data:`evaluate_point` to the
    running flow's task runner at once and returns the rows in job order. ``cases``: per attack name
    ``{"poisoned": {"path"}, "victim": {"path"}, "attack_cfg"}`` (``flows.benchmark.prepare_attacks``' entries)."""
    from detoxops.operations.sweep import BASELINE

    base_cfg = params.sampdetox.model_dump(mode="json")

    def score(jobs) -> list[dict[str, Any]]:
        futures = []
        for job in jobs:
            case = cases[job.attack]
            futures.append(evaluate_point.submit(
                case["poisoned"]["path"], case["victim"]["path"], purifier_path, case["attack_cfg"],
                base_cfg if job.point is None else {**base_cfg, **job.point},
                BASELINE if job.point is None else "sampdetox", job.split, params.data.val_fraction,
                params.data.seed, max_images))
        return [f.result() for f in futures]

    return score
