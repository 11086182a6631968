"""DataElixir: sanitise a (possibly poisoned) training set — detection of poisoned samples and the target
label, purified images / restored labels — then retrain a clean model on the result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["sanitize_dataset", "detection_rates", "accuracy_task"]


def detection_rates(flagged: np.ndarray, poisoned: np.ndarray) -> dict[str, float]:
    """TPR / FPR (%) of the flags against the ground truth (NaN where a class is empty)."""
    flagged, poisoned = np.asarray(flagged, bool), np.asarray(poisoned, bool)
    tpr = 100.0 * float(flagged[poisoned].mean()) if poisoned.any() else float("nan")
    fpr = 100.0 * float(flagged[~poisoned].mean()) if (~poisoned).any() else float("nan")
    return {"tpr": tpr, "fpr": fpr}


@task(name="dataelixir", cache_policy=HEAVY_CACHE, result_serializer="json")
def sanitize_dataset(
    version: str, victim_path: str, purifier_path: str, dataelixir_cfg: dict[str, Any], out_root: str, split: str = "train"
) -> dict[str, Any]:
    """Run DataElixir on ``<version>/<split>``; store the purified set as a version under ``out_root`` and the
    per-sample decisions as ``decisions.csv``. Returns paths, the detected target label (or None), TPR / FPR."""
    import torch

    from detoxops.config import DataElixirConfig
    from detoxops.data import load_version, save_version
    from detoxops.defenses.dataelixir import DataElixir
    from detoxops.diffusion import load_purifier
    from detoxops.models import load_classifier

    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = load_version(version)[split]
    victim = load_classifier(victim_path).to(device).eval()
    purifier = load_purifier(purifier_path, device=device)
    workdir = Path(out_root) / "work" / Path(version).name
    from tasks.progress import task_progress

    with task_progress("dataelixir"):
        result = DataElixir(purifier, DataElixirConfig(**dataelixir_cfg)).sanitize(train, victim, workdir,
                                                                                   progress=False)
    purified = result.purified if hasattr(result, "purified") else result.dataset
    flagged = np.asarray(result.flagged, dtype=bool)
    target = getattr(result, "target_label", None)
    path = save_version({"train": purified}, out_root, f"{Path(version).parent.name}-purified", source=str(version))
    decisions = Path(path) / "decisions.csv"
    if not decisions.exists():
        import pandas as pd

        pd.DataFrame(
            {
                "index": np.arange(len(train)),
                "label": train.labels,
                "flagged": flagged.astype(int),
                "poisoned_true": train.poisoned.astype(int),
                "restored_label": np.asarray(purified.labels),
            }
        ).to_csv(decisions, index=False)
    anomaly = getattr(result, "anomaly_index", None)
    summary = {
        "path": str(path),
        "decisions": str(decisions),
        "target_label": None if target is None else int(target),
        "n_flagged": int(flagged.sum()),
        "n_train": len(train),
        "sets": _jsonable((getattr(purified, "meta", None) or {}).get("sanitize", {}).get("sets")),
        "anomaly_index": _jsonable(anomaly),
        **detection_rates(flagged, train.poisoned),
    }
    return summary


@task(name="accuracy", cache_policy=HEAVY_CACHE, result_serializer="json")
def accuracy_task(version: str, model_path: str, split: str = "test", max_images: int | None = None) -> dict[str, Any]:
    """Accuracy (%) of a saved classifier on ``<version>/<split>`` (a seeded subset of ``max_images``), for
    datasets without an attack (no triggered split, so no PA / ASR)."""
    from detoxops.data import load_version
    from detoxops.models import load_classifier, predict

    ds = load_version(version)[split]
    idx = np.arange(len(ds))
    if max_images is not None and len(ds) > max_images:
        idx = np.sort(np.random.default_rng(0).choice(len(ds), size=max_images, replace=False))
    pred = predict(load_classifier(model_path).eval(), np.asarray(ds.images[idx]))
    return {"ca": 100.0 * float((pred == np.asarray(ds.labels)[idx]).mean()), "n": int(len(idx))}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist()))
