"""SampDetox (and baseline) evaluation of a victim under an attack: CA / PA / ASR per defense."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["evaluate_defenses_task", "log_defense_rows"]


def _eval_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


@task(name="detox-eval", cache_policy=HEAVY_CACHE, result_serializer="json")
def evaluate_defenses_task(
    poisoned_version: str,
    victim_path: str,
    purifier_path: str,
    defenses: list[str],
    sampdetox_cfg: dict[str, Any],
    attack_cfg: dict[str, Any],
    max_images: int | None,
    out_dir: str,
) -> list[dict[str, Any]]:
    """One row per defense (CA / PA / ASR in %, images/s, map quality); samples of each defense written to
    ``<out_dir>/<defense>/samples`` for MLflow. Runs on CUDA when present."""
    import torch

    from detoxops.config import SampDetoxConfig
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.evaluation import EvalSet, evaluate_defense
    from detoxops.defenses.guard import Detoxifier
    from detoxops.diffusion import load_purifier
    from detoxops.models import load_classifier
    from tasks.artifacts import write_samples
    from tasks.attack_tasks import load_test_splits

    device = "cuda" if torch.cuda.is_available() else "cpu"
    clean, triggered, attack = load_test_splits(poisoned_version, attack_cfg)
    seed = int(sampdetox_cfg.get("seed", 0))
    clean = clean.subset(_eval_subset(len(clean), max_images, seed))
    triggered = triggered.subset(_eval_subset(len(triggered), max_images, seed + 1))
    data = EvalSet.from_imagesets(clean, triggered, attack_cfg["target"], attack=attack)
    classifier = load_classifier(victim_path).to(device).eval()
    purifier = load_purifier(purifier_path, device=device)
    cfg = SampDetoxConfig(**sampdetox_cfg)
    rows = []
    for name in defenses:
        defense = build_defense(name, purifier if name != "none" else None, cfg)
        row = evaluate_defense(classifier, defense, data, batch_size=cfg.batch_size, name=name)
        k = min(8, len(data.poisoned_images))
        guard = Detoxifier(classifier, defense, batch_size=cfg.batch_size)
        poisoned = np.asarray(data.poisoned_images[:k])
        pred_detox, maps = guard.predict_with_maps(poisoned)
        detoxified = guard.detoxify(poisoned) if name != "none" else poisoned
        trigger_map = maps.get("trigger_map", np.zeros((k, 1, *poisoned.shape[1:3])))
        trigger_map = trigger_map.reshape(k, -1, *poisoned.shape[1:3]).mean(axis=1)
        pred_poisoned = Detoxifier(classifier, None).predict(poisoned)
        folder = Path(out_dir) / name.replace("*", "star") / "samples"
        write_samples(
            folder, np.asarray(data.clean_images[:k]) if len(data.clean_images) >= k else poisoned,
            poisoned, detoxified, trigger_map, data.poisoned_labels[:k], pred_poisoned, pred_detox,
        )
        row["samples_dir"] = str(folder)
        rows.append({k2: (float(v) if isinstance(v, np.floating) else v) for k2, v in row.items()})
    return rows


def log_defense_rows(rows: list[dict[str, Any]], flow: str, parent_run_id: str, tags: dict[str, Any], prefix: str) -> list[str]:
    """A nested MLflow run per defense: metrics ``ca``/``pa``/``asr`` as fractions, throughput, map quality;
    the samples folder as ``samples/``."""
    import mlflow

    from tasks.tracking import run

    run_ids = []
    for row in rows:
        with run(
            flow, f"defense={row['defense']}", kind="defense", prefix=prefix, parent_run_id=parent_run_id,
            tags={**tags, "detoxops.defense": row["defense"]},
        ) as active:
            metrics = {k: row[k] / 100.0 for k in ("ca", "pa", "asr") if k in row}
            for key in ("seconds", "images_per_s", "map_auc", "trigger_level", "image_level"):
                if isinstance(row.get(key), int | float) and np.isfinite(row[key]):
                    metrics[key] = float(row[key])
            mlflow.log_metrics(metrics)
            if row.get("samples_dir") and Path(row["samples_dir"]).is_dir():
                mlflow.log_artifacts(row["samples_dir"], "samples")
            run_ids.append(active.info.run_id)
    return run_ids


def scratch_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix)
