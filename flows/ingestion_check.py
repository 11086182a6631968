"""Ingestion check: is an incoming dataset poisoned? Quarantine it before anyone trains on it.

source (class-folder tree, .tar.gz / .zip archive, stored version, builtin name, or a DVC-tracked path /
``.dvc`` file, pulled when missing) → ingest → DVC version → train a victim on the untrusted training set
(DataElixir needs a model trained on the data it checks) → purifier → DataElixir scan. Then

* a target label was found → the version is **quarantined**: ``<hash12>.check.json`` next to the version and
  its ``.dvc`` file, the purified version stored (and DVC-versioned) beside it, MLflow run tagged
  ``detoxops.status=quarantined``, a Prefect markdown / table artifact, and the flow run ends **Failed** (so
  Prefect automations / notifications fire) — the CLI exits with 1;
* no target label → **passed**: the same records with ``status=passed``; the flow run is Completed.

    python -m flows.ingestion_check --source PATH [--params params.yaml] [--set key=value ...] [--dvc-root DIR]
    python -m flows.ingestion_check --source PATH --serve [--cron "0 * * * *"] [--name ingestion-check]

``--serve`` creates a deployment with that cron schedule and keeps serving its runs (needs a Prefect server:
``prefect server start`` and ``PREFECT_API_URL``; see docs/platform.md). Budgets are the demo's
(``CHECK_OVERRIDES``); ``--set`` overrides them. Heavy tasks are cached: re-checking an unchanged source is cheap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tasks import PROJECT_ROOT, configure_environment

configure_environment()

from prefect import flow  # noqa: E402
from prefect.states import Failed  # noqa: E402

from detoxops.config import load_params  # noqa: E402
from flows.demo import DEMO_OVERRIDES  # noqa: E402

# The demo's reduced DataElixir budget (params.yaml holds the paper settings, hours per 1,000 images on a CPU).
CHECK_OVERRIDES = list(DEMO_OVERRIDES)
DEPLOYMENT_NAME = "ingestion-check"
DEFAULT_CRON = "0 * * * *"
FLOW = "ingestion_check"  # MLflow experiment <prefix>/ingestion_check


@flow(name="ingestion-check", log_prints=True)
def ingestion_check(
    source: str | None = None,
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    dvc_root: str | None = None,
) -> Any:
    """Check ``source`` (default ``params.data.source``); returns the check record when it passed, a Failed
    state carrying it when the dataset was quarantined."""
    import math

    import mlflow
    from prefect.runtime import flow_run

    from tasks.data_tasks import dataset_identity, ingest_dataset, version_dataset
    from tasks.ingestion_tasks import (
        anomaly_rows,
        check_markdown,
        default_dvc_root,
        log_dataelixir_artifacts,
        marker_path,
        now_utc,
        publish_check_artifacts,
        resolve_source,
        write_check_marker,
    )
    from tasks.purifier_tasks import get_purifier
    from tasks.sanitize_tasks import sanitize_dataset
    from tasks.tracking import log_dataset, run, setup_tracking
    from tasks.victim_tasks import train_victim

    params = load_params(_abs(params_path), CHECK_OVERRIDES + list(overrides or []))
    source = str(source or params.data.source)
    uri = setup_tracking(params.tracking)
    data_root = _abs(params.data.root).resolve()
    runs_root = _abs(params.tracking.runs_dir)
    repo_root = Path(dvc_root).resolve() if dvc_root else default_dvc_root(data_root)
    if repo_root != data_root and repo_root not in data_root.parents:
        raise ValueError(f"data.root {data_root} is outside the DVC repository {repo_root}: the check versions "
                         "what it ingests; pass --dvc-root (a folder above data.root) or move data.root")
    started = time.perf_counter()

    resolved = resolve_source(source)
    ingested = ingest_dataset(resolved, params.data.model_dump(mode="json"), str(data_root))
    dvc = version_dataset(ingested["path"], str(repo_root), params.tracking.dvc_remote)
    data_version = dataset_identity(ingested, dvc)
    # DataElixir labels candidates with a model trained on the very data it checks (no attack is known here).
    victim = train_victim(ingested["path"], params.victim.model_dump(mode="json"), None,
                          str(runs_root / "victims"))
    purifier = get_purifier(params.diffusion.model_dump(mode="json"), ingested["path"], str(runs_root / "purifiers"))
    sanitized = sanitize_dataset(ingested["path"], victim["path"], purifier["path"],
                                 params.dataelixir.model_dump(mode="json"), str(data_root))
    anomaly = sanitized.get("anomaly_index") or {}
    targets = [int(t) for t in anomaly.get("target_labels") or []]
    if not targets and sanitized.get("target_label") is not None:
        targets = [int(sanitized["target_label"])]
    status = "quarantined" if targets else "passed"
    purified_dvc = None
    if targets:  # the purified set becomes a version of its own, next to the quarantined one
        purified_dvc = version_dataset(sanitized["path"], str(repo_root), params.tracking.dvc_remote)
    seconds = time.perf_counter() - started

    info = ingested.get("info") or {}
    record: dict[str, Any] = {
        "status": status,
        "dataset": ingested["name"],
        "source": source,
        "resolved_source": resolved,
        "version": ingested["path"],
        "hash": ingested["hash"],
        "dvc_md5": (dvc or {}).get("md5"),
        "dvc_file": (dvc or {}).get("dvc_file"),
        "data_version": data_version,
        "target_labels": targets,
        "target_label": targets[0] if targets else None,
        "counts": {"train": sanitized.get("n_train"), "flagged": sanitized.get("n_flagged"),
                   "sets": sanitized.get("sets") or {}},
        "anomaly_index": anomaly,
        "anomaly_rows": anomaly_rows(anomaly, info.get("class_names")),
        "threshold": params.dataelixir.anomaly_threshold,
        "target_rule": params.dataelixir.target_rule,
        "purified_version": sanitized["path"] if targets else None,
        "purified_dvc_md5": (purified_dvc or {}).get("md5"),
        "victim": victim["path"],
        "purifier": purifier["path"],
        "checked_at": now_utc(),
        "seconds": round(seconds, 1),
        "prefect_flow_run_id": str(flow_run.id) if flow_run.id else None,
        "marker": str(marker_path(ingested["path"])),
    }

    tags = {
        "detoxops.dataset": ingested["name"], "detoxops.data_version": data_version, "detoxops.status": status,
        "detoxops.target_label": ",".join(map(str, targets)) if targets else None,
        "detoxops.model": params.victim.arch, "detoxops.seed": params.dataelixir.seed,
        "detoxops.source": source, "detoxops.marker": record["marker"],
        "detoxops.purified_version": record["purified_version"],
        "detoxops.purified_data_version": record["purified_dvc_md5"],
        "detoxops.prefect_flow_run_id": record["prefect_flow_run_id"],
    }
    with run(FLOW, f"check {ingested['name']}", kind="ingestion", prefix=params.tracking.experiment_prefix,
             tags=tags, params=params.to_dict()) as active:
        record["mlflow_run_id"] = active.info.run_id
        log_dataset(ingested["path"], ingested["name"], data_version, "ingestion")
        metrics = {"seconds": seconds, "n_flagged": float(sanitized.get("n_flagged") or 0),
                   "n_train": float(sanitized.get("n_train") or 0)}
        # TPR / FPR only with ground-truth poison flags (a stored version that records its poisoned images):
        # a folder or archive carries none, so TPR is NaN and "FPR" would merely be the flagged share
        tpr = sanitized.get("tpr")
        if isinstance(tpr, float) and math.isfinite(tpr):
            metrics |= {k: sanitized[k] / 100.0 for k in ("tpr", "fpr")
                        if isinstance(sanitized.get(k), float) and math.isfinite(sanitized[k])}
        mlflow.log_metrics(metrics)
        staging = runs_root / FLOW / data_version[:16]
        log_dataelixir_artifacts(sanitized, params.dataelixir.anomaly_threshold, staging)
        marker = write_check_marker(ingested["path"], record)
        mlflow.log_artifact(str(marker), "check")
        (staging / "check.md").write_text(check_markdown(record))
        mlflow.log_artifact(str(staging / "check.md"), "check")

    publish_check_artifacts(record)
    print("\n" + check_markdown(record))
    print(f"MLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    if targets:
        return Failed(message=f"dataset {ingested['name']} @ {data_version} quarantined: backdoor target label(s) "
                              f"{targets} detected; purified version {sanitized['path']}", data=record)
    return record


def deployment_options(
    source: str | None,
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    dvc_root: str | None = None,
    cron: str = DEFAULT_CRON,
    name: str = DEPLOYMENT_NAME,
) -> dict[str, Any]:
    """Keyword arguments of ``ingestion_check.serve`` / ``.to_deployment`` for a scheduled check of ``source``."""
    return {
        "name": name,
        "cron": cron,
        "parameters": {"source": source, "params_path": params_path, "overrides": list(overrides or []),
                       "dvc_root": dvc_root},
        "tags": ["detoxops", "ingestion-check"],
        "description": f"Scheduled DataElixir ingestion check of {source or 'params.data.source'} ({cron}).",
    }


def _abs(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=None,
                    help="folder, archive, stored version, builtin name or DVC-tracked path (default: data.source)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--dvc-root", default=None,
                    help="DVC repository the versions go to (default: the nearest .dvc/ above data.root, else the project)")
    ap.add_argument("--serve", action="store_true", help="serve a scheduled deployment instead of checking once")
    ap.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule with --serve (default {DEFAULT_CRON!r})")
    ap.add_argument("--name", default=DEPLOYMENT_NAME, help="deployment name with --serve")
    args = ap.parse_args(argv)
    if args.serve:
        ingestion_check.serve(**deployment_options(args.source, args.params, args.overrides, args.dvc_root,
                                                   args.cron, args.name))
        return 0
    state = ingestion_check(args.source, args.params, args.overrides, args.dvc_root, return_state=True)
    if state.is_completed():
        return 0
    print(f"ingestion check {state.name}: {state.message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
