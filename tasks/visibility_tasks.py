"""Trigger visibility v and sample robustness η_r (SampDetox figure 2) of a poisoned test set against its victim,
recorded as ``robustness/visibility_robustness.csv`` — the artifact the dashboard's *Visibility vs robustness*
page reads from any run of a ``<prefix>/*`` experiment."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["ARTIFACT_DIR", "CSV_NAME", "log_visibility_rows", "visibility_rows_task"]

ARTIFACT_DIR = "robustness"
CSV_NAME = "visibility_robustness.csv"


@task(name="visibility-robustness", cache_policy=HEAVY_CACHE, result_serializer="json")
def visibility_rows_task(
    poisoned_version: str,
    victim_path: str,
    attack_cfg: dict[str, Any],
    max_images: int | None = 200,
    seed: int = 0,
    eta_step: float = 0.01,
) -> dict[str, Any]:
    """Rows (attack, index, v, eta_r) for at most ``max_images`` triggered test images of ``poisoned_version``
    (``test`` paired with ``clean_test`` by ``source_index``) against the victim, and their summary. The rows
    travel in the (cached) result, so a cache hit can still log them to a new run."""
    import numpy as np

    from detoxops.attacks.visibility import attack_summary, paired_rows
    from detoxops.data import load_version
    from detoxops.models import load_classifier, predict

    splits = load_version(poisoned_version)
    model = load_classifier(victim_path)
    etas = np.round(np.arange(0.0, 1.0 + eta_step / 2, eta_step), 10).clip(0, 1)
    rows = paired_rows(attack_cfg["name"], splits["clean_test"], splits["test"], lambda x: predict(model, x),
                       int(attack_cfg["target"]), max_images=max_images, seed=seed, etas=etas)
    return {"rows": rows, "summary": attack_summary(rows) | {"target": int(attack_cfg["target"])}}


def log_visibility_rows(result: dict[str, Any]) -> str:
    """Log ``result["rows"]`` to the active MLflow run as ``robustness/visibility_robustness.csv``; returns the
    artifact path. Not a cached task: every run that measured (or re-used) the rows records them."""
    import mlflow

    from detoxops.attacks.visibility import write_rows_csv

    with tempfile.TemporaryDirectory(prefix="detoxops-visibility-") as tmp:
        mlflow.log_artifact(str(write_rows_csv(result["rows"], Path(tmp) / CSV_NAME)), ARTIFACT_DIR)
    return f"{ARTIFACT_DIR}/{CSV_NAME}"
