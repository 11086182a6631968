"""SampDetox (and baseline) evaluation of a victim under an attack: CA / PA / ASR per defense."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.caching import HEAVY_CACHE

__all__ = ["evaluate_defenses_task", "evaluate_byo_task", "log_defense_rows"]


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
    data_cfg: dict[str, Any],
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """One row per defense (CA / PA / ASR as fractions, images/s, map quality) on the held-out ``test`` side of the poisoned
    version's test split (``detoxops.defenses.evaluation.eval_inputs`` with ``data_cfg``'s ``val_fraction`` / ``seed``:
    the images ``detoxops detox score --split test``, the ``detox_eval`` stage and the benchmarks report on), at most
    ``max_images`` of each side; samples of each defense written to ``<out_dir>/<defense>/samples`` for MLflow.
    Runs on CUDA when present; the purifier in ``precision`` (``params.diffusion.precision``)."""
    from detoxops.config import DataConfig, SampDetoxConfig
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.evaluation import eval_inputs, evaluate_defenses
    from detoxops.devices import resolve_device
    from detoxops.diffusion import load_purifier
    from detoxops.models import load_classifier
    from tasks.attack_tasks import load_test_splits

    device = str(resolve_device())
    clean, triggered, attack = load_test_splits(poisoned_version, attack_cfg)
    split = DataConfig(**data_cfg)
    data = eval_inputs(clean, triggered, attack_cfg["target"], "test", split.val_fraction, split.seed,
                       max_images=max_images, attack=attack)
    classifier = load_classifier(victim_path).to(device).eval()
    purifier = load_purifier(purifier_path, device=device, precision=precision)
    cfg = SampDetoxConfig(**sampdetox_cfg)
    built = {name: build_defense(name, purifier if name != "none" else None, cfg, classifier=classifier)
             for name in defenses}
    k = min(8, len(data.poisoned_images))
    clean_idx = np.arange(k) if len(data.clean_images) >= k else None
    return [_result_row(row, write_defense_samples(classifier, built[row["defense"]], row["defense"], data, clean_idx,
                                                    np.arange(k), cfg.batch_size, Path(out_dir)))
            for row in evaluate_defenses(classifier, built, data, cfg.batch_size)]


def _result_row(row: dict[str, Any], samples_dir: Path) -> dict[str, Any]:
    """A task's result row: plain floats, rates as fractions (``tasks.report_tasks.format_table`` / ``write_table``
    show them in percent), where its sample grid is."""
    plain = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}
    return {**plain, "samples_dir": str(samples_dir)}


def write_defense_samples(classifier, defense, name: str, data, clean_idx: np.ndarray | None, poisoned_idx: np.ndarray,
                          batch_size: int, out_dir: Path) -> Path:
    """``<out_dir>/<defense>/samples``: samples.npz + grid.png (clean | triggered | trigger map | detoxified) of the
    chosen images, with the classifier's labels before and after the defense (``tasks.artifacts.write_samples``).
    Without ``clean_idx`` the triggered images stand in for the clean column."""
    from detoxops.defenses.guard import Detoxifier
    from tasks.artifacts import write_samples

    guard = Detoxifier(classifier, defense, batch_size=batch_size)
    poisoned = np.asarray(data.poisoned_images[poisoned_idx])
    k = len(poisoned)
    detoxified, parts = np.empty_like(poisoned), {}
    for start, batch, batch_maps in guard.batches(poisoned, with_maps=True):  # the defense runs once per image
        detoxified[start : start + len(batch)] = batch
        for key, value in batch_maps.items():
            parts.setdefault(key, []).append(value)
    maps = {key: np.concatenate(value) for key, value in parts.items()}
    pred_detox = Detoxifier(classifier, None).predict(detoxified)  # what the guard's classifier is sent
    if name == "none":
        detoxified = poisoned
    trigger_map = maps.get("trigger_map", np.zeros((k, 1, *poisoned.shape[1:3])))
    trigger_map = trigger_map.reshape(k, -1, *poisoned.shape[1:3]).mean(axis=1)
    pred_poisoned = Detoxifier(classifier, None).predict(poisoned)
    folder = Path(out_dir) / name.replace("*", "star") / "samples"
    clean = np.asarray(data.clean_images[clean_idx]) if clean_idx is not None else poisoned
    write_samples(folder, clean, poisoned, detoxified, trigger_map, data.poisoned_labels[poisoned_idx], pred_poisoned,
                  pred_detox)
    return folder


@task(name="detox-byo-eval", cache_policy=NO_CACHE)
def evaluate_byo_task(
    clean: str,
    triggered: str,
    model: str,
    defenses: list[str],
    params: dict[str, Any],
    out_dir: str,
    target: str | None = None,
    purifier: str | None = None,
    max_images: int | None = None,
    image_size: int | None = None,
    resize: bool = True,
    allow_unsafe_model: bool = False,
    input_range: str = "0-1",
    http_protocol: str = "auto",
) -> dict[str, Any]:
    """Your model on your images (``detoxops detox eval``'s rules, ``detoxops.defenses.byo``): one row per defense
    (CA / PA / ASR as fractions) with its sample grid under ``out_dir``, plus what was read and decided (notes, target,
    sizes, the sets' content hashes, the model's digest). Not cached: an endpoint may change behind its URL."""
    import hashlib

    from detoxops.config import Params
    from detoxops.defenses.byo import byo_defenses, prepare_byo
    from detoxops.defenses.catalog import needs_purifier
    from detoxops.defenses.evaluation import evaluate_defenses
    from detoxops.devices import resolve_device
    from detoxops.diffusion import load_purifier
    from detoxops.models.external import load_model

    p = Params(**params)
    device = str(resolve_device())
    loaded = load_model(model, allow_unsafe=allow_unsafe_model, device=device, input_range=input_range,
                        http_protocol=http_protocol)
    pur = (load_purifier(purifier, device=device, precision=p.diffusion.precision)
           if purifier and needs_purifier(defenses) else None)
    plan = prepare_byo(clean, triggered, target=target, model_size=loaded.input_size,
                       model_classes=loaded.class_names, model_num_classes=loaded.num_classes, image_size=image_size,
                       purifier_size=pur.image_size if pur is not None else None, resize=resize, progress=False,
                       limits=p.data.limits)
    built, purifier_origin = byo_defenses(defenses, plan.image_size, p.sampdetox, pur, p.diffusion.purifier, device,
                                          precision=p.diffusion.precision)
    seed = p.sampdetox.seed
    data = plan.data.at_most(max_images, seed)  # `detoxops detox eval --limit`'s sample: the same images
    rng = np.random.default_rng(seed)
    k = min(8, len(data.poisoned_images), len(data.clean_images))
    clean_idx = np.sort(rng.permutation(len(data.clean_images))[:k])
    poisoned_idx = np.sort(rng.permutation(len(data.poisoned_images))[:k])
    rows = [_result_row(row, write_defense_samples(loaded.classifier, built[row["defense"]], row["defense"], data,
                                                    clean_idx, poisoned_idx, p.sampdetox.batch_size, Path(out_dir)))
            for row in evaluate_defenses(loaded.classifier, built, data, p.sampdetox.batch_size)]
    clean_hash = hashlib.sha256(np.ascontiguousarray(data.clean_images).tobytes()
                                + data.clean_labels.tobytes()).hexdigest()
    triggered_hash = hashlib.sha256(np.ascontiguousarray(data.poisoned_images).tobytes()
                                    + data.poisoned_labels.tobytes()).hexdigest()
    return {
        "rows": rows,
        "notes": plan.notes,
        "model": {"source": loaded.source, "kind": loaded.kind, "name": loaded.name,
                  "description": loaded.description, "digest": loaded.digest, "tags": loaded.tracking_tags()},
        "clean": {"path": str(clean), "origin": plan.clean_origin, "name": _set_name(clean), "n": len(data.clean_images),
                  "hash": clean_hash},
        "triggered": {"path": str(triggered), "origin": plan.triggered_origin, "name": data.name,
                      "n": len(data.poisoned_images), "hash": triggered_hash},
        "target": plan.target,
        "target_name": plan.target_name,
        "class_names": plan.class_names,
        "image_size": list(plan.image_size),
        "dropped_target_images": plan.dropped_target_images,
        "purifier": purifier_origin,
        "data_version": hashlib.sha256((clean_hash + triggered_hash).encode()).hexdigest(),
    }


def _set_name(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.name in ("train", "test", "val") else p.name


def log_defense_rows(rows: list[dict[str, Any]], flow: str, parent_run_id: str, tags: dict[str, Any], prefix: str) -> list[str]:
    """A nested MLflow run per defense: metrics ``ca``/``pa``/``asr`` as fractions, throughput, map quality, the
    label drift of the clean images (``drift_inflow`` / ``drift_changed`` / ``drift_p``; tags ``detoxops.drift_class`` and
    ``detoxops.drift_flagged``); the samples folder as ``samples/``."""
    import mlflow

    from tasks.tracking import run

    run_ids = []
    for row in rows:
        drift_tags = {f"detoxops.{k}": str(row[k]).lower() if isinstance(row[k], bool) else str(row[k])
                      for k in ("drift_class", "drift_flagged") if k in row}
        with run(
            flow, f"defense={row['defense']}", kind="defense", prefix=prefix, parent_run_id=parent_run_id,
            tags={**tags, "detoxops.defense": row["defense"], **drift_tags},
        ) as active:
            metrics = {k: float(row[k]) for k in ("ca", "pa", "asr") if k in row}
            for key in ("seconds", "images_per_s", "map_auc", "trigger_level", "image_level", "drift_inflow",
                        "drift_changed", "drift_p"):
                if isinstance(row.get(key), int | float) and np.isfinite(row[key]):
                    metrics[key] = float(row[key])
            mlflow.log_metrics(metrics)
            if row.get("samples_dir") and Path(row["samples_dir"]).is_dir():
                mlflow.log_artifacts(row["samples_dir"], "samples")
            run_ids.append(active.info.run_id)
    return run_ids


def scratch_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix)
