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
    from tasks.data_tasks import dataset_identity, ingest_dataset, version_dataset
    from tasks.ingestion_tasks import (
        check_markdown,
        check_targets,
        default_dvc_root,
        record_ingestion_check,
        resolve_source,
    )
    from tasks.purifier_tasks import get_purifier
    from tasks.sanitize_tasks import sanitize_dataset
    from tasks.tracking import setup_tracking
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
    targets = check_targets(sanitized)
    purified_dvc = None
    if targets:  # the purified set becomes a version of its own, next to the quarantined one
        purified_dvc = version_dataset(sanitized["path"], str(repo_root), params.tracking.dvc_remote)
    record = record_ingestion_check(
        flow=FLOW, params=params, source=source, resolved_source=resolved, dataset=ingested, dvc=dvc,
        data_version=data_version, sanitized=sanitized, victim=victim, purifier=purifier,
        purified_dvc=purified_dvc, seconds=time.perf_counter() - started, runs_root=runs_root,
    )
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
