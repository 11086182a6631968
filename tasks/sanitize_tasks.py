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

__all__ = ["sanitize_dataset", "candidate_shards", "shard_count_task", "work_dir", "elixir_config", "accuracy_task"]


@task(name="dataelixir", cache_policy=HEAVY_CACHE, result_serializer="json")
def sanitize_dataset(
    version: str, victim_path: str, purifier_path: str, dataelixir_cfg: dict[str, Any], out_root: str,
    split: str = "train", victim_cfg: dict[str, Any] | None = None, precision: str = "auto",
) -> dict[str, Any]:
    """:func:`detoxops.operations.sanitize` on ``<version>/<split>``: the purified set stored as a version under
    ``out_root`` with its ``decisions.csv`` and ``anomaly_index.json``. ``victim_cfg`` (``params.victim``) is the
    relabelling model's recipe, as ``detoxops sanitize`` uses it; ``None`` = the one the victim was trained with
    (``meta.params`` of its ``classifier.json``, recorded by ``train_victim`` and ``detoxops victim train``).
    ``precision`` is ``params.diffusion.precision`` (the purifier's forward pass).

    Returns paths, the detected target label (or None), counts, and TPR / FPR as fractions (NaN without ground
    truth; ``detoxops.metrics.percent`` where a table shows them)."""
    from detoxops.config import DiffusionConfig, Params, VictimConfig
    from detoxops.data import load_version
    from detoxops.models import load_classifier
    from detoxops.operations import sanitize
    from tasks.progress import task_progress

    train = load_version(version)[split]
    victim = load_classifier(victim_path)
    if victim_cfg is None:
        victim_cfg = _trained_with(victim_path)
    params = Params(dataelixir=elixir_config(dataelixir_cfg, out_root), victim=VictimConfig(**victim_cfg),
                    diffusion=DiffusionConfig(precision=precision))
    with task_progress("dataelixir"):
        outcome = sanitize(train, victim, params, version_root=out_root,
                           version_name=f"{Path(version).parent.name}-purified", source=str(version),
                           purifier=purifier_path, workdir=work_dir(out_root, version), progress=False)
    return {
        "path": str(outcome.version),
        "decisions": str(outcome.decisions),
        "content_hash": outcome.content_hash,
        "target_label": outcome.target_label,
        "n_flagged": outcome.flagged,
        "n_train": outcome.n,
        "sets": outcome.sets,
        "anomaly_index": _jsonable(outcome.anomaly),
        "tpr": outcome.tpr,
        "fpr": outcome.fpr,
        "dataelixir": outcome.settings,  # what ran: the profile resolved for the purifier's image size
    }


def elixir_config(dataelixir_cfg: dict[str, Any], out_root: str):
    """``params.dataelixir`` as the tasks run it: with ``noise: per_image`` and no ``purification_cache`` set, the
    store of purified images is ``out_root/purification-cache``, one for every version sanitised under ``out_root``
    (not one per version's work folder), so the next ingestion check purifies only the images it has not seen."""
    from detoxops.config import DataElixirConfig

    cfg = DataElixirConfig(**dataelixir_cfg)
    if cfg.noise == "per_image" and not cfg.purification_cache:
        cfg = cfg.model_copy(update={"purification_cache": str(Path(out_root) / "purification-cache")})
    return cfg


def work_dir(out_root: str, version: str) -> Path:
    """Where ``sanitize_dataset`` keeps (and finds) the candidate shards of ``version``."""
    return Path(out_root) / "work" / Path(version).name


@task(name="dataelixir-shard-count", result_serializer="json")
def shard_count_task(version: str, dataelixir_cfg: dict[str, Any], split: str = "train") -> int:
    """How many candidate shards DataElixir makes of ``<version>/<split>`` (``dataelixir.shard_size``)."""
    from detoxops.config import DataElixirConfig, Params
    from detoxops.data import load_version
    from detoxops.operations import shard_count

    return shard_count(len(load_version(version)[split]), Params(dataelixir=DataElixirConfig(**dataelixir_cfg)))


@task(name="dataelixir-candidates", result_serializer="json")
def candidate_shards(
    version: str, victim_path: str, purifier_path: str, dataelixir_cfg: dict[str, Any], out_root: str,
    shard_ids: list[int], split: str = "train", precision: str = "auto",
) -> list[int]:
    """DataElixir's costly stage for ``shard_ids`` of ``<version>/<split>``
    (:func:`detoxops.operations.sanitize_shards`), stored where ``sanitize_dataset`` with the same arguments looks
    for them: submitted for disjoint shard lists on a Dask (or thread) task runner, the work runs in parallel and
    ``sanitize_dataset`` then only loads it. Not cached by Prefect: the shard store itself skips finished shards.
    Returns the shards this call computed."""
    from detoxops.config import DiffusionConfig, Params
    from detoxops.data import load_version
    from detoxops.models import load_classifier
    from detoxops.operations import sanitize_shards
    from tasks.progress import task_progress

    params = Params(dataelixir=elixir_config(dataelixir_cfg, out_root), diffusion=DiffusionConfig(precision=precision))
    with task_progress("dataelixir-candidates"):
        return sanitize_shards(load_version(version)[split], load_classifier(victim_path), params, shard_ids,
                               work_dir(out_root, version), purifier=purifier_path, progress=False)


def _trained_with(victim_path: str) -> dict[str, Any]:
    from detoxops.models import read_classifier_config

    recipe = (read_classifier_config(victim_path).get("meta") or {}).get("params")
    if not isinstance(recipe, dict):
        raise ValueError(f"{victim_path}: classifier.json records no training recipe (meta.params); pass victim_cfg "
                         "(params.victim) to sanitize_dataset")
    return recipe


@task(name="accuracy", cache_policy=HEAVY_CACHE, result_serializer="json")
def accuracy_task(version: str, model_path: str, data_cfg: dict[str, Any], max_images: int | None = None) -> dict[str, Any]:
    """Accuracy (a fraction) of a saved classifier on the held-out ``test`` side of ``<version>/test`` (the split rule of
    ``detoxops.defenses.evaluation.eval_inputs``, ``data_cfg``'s ``val_fraction`` / ``seed``), at most
    ``max_images`` of it (``sample_at_most``, the same seed), for datasets without an attack (no PA / ASR)."""
    from detoxops.config import DataConfig
    from detoxops.data import load_version
    from detoxops.defenses.evaluation import sample_at_most, split_eval_indices
    from detoxops.metrics import clean_accuracy
    from detoxops.models import load_classifier, predict

    ds = load_version(version)["test"]
    cfg = DataConfig(**data_cfg)
    held_out = split_eval_indices(ds, [], cfg.val_fraction, cfg.seed)["test"][0]
    idx = held_out[sample_at_most((len(held_out),), max_images, cfg.seed)[0]]
    pred = predict(load_classifier(model_path).eval(), np.asarray(ds.images[idx]))
    return {"ca": clean_accuracy(pred, np.asarray(ds.labels)[idx]), "n": int(len(idx))}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist()))
