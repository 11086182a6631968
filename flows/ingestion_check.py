"""Ingestion check: is an incoming dataset poisoned? Quarantine it before anyone trains on it.

source (class-folder tree, .tar.gz / .zip archive, stored version, builtin name, or a DVC-tracked path /
``.dvc`` file, pulled when missing) → inspect (image sizes from the headers; the purifier for that size) → ingest
(refused before versioning when the check cannot train on it: fewer than 3 classes or 10 training images per
class) → DVC version → train a victim on the untrusted training set (DataElixir needs a model trained on the data
it checks; its input size and class count are the data's) → DataElixir scan with the purifier. Then

* a target label was found → the version is **quarantined**: ``<hash12>.check.json`` next to the version and
  its ``.dvc`` file, the purified version stored (and DVC-versioned) beside it, MLflow run tagged
  ``detoxops.status=quarantined``, a Prefect markdown / table artifact, and the flow run ends **Failed** (so
  Prefect automations / notifications fire) — the CLI exits with 3;
* no target label → **passed**: the same records with ``status=passed``; the flow run is Completed, exit 0;
* anything else (bad input, no purifier for the size, a crash) → **failed**, with the reason, in MLflow
  (``detoxops.status=failed``, ``detoxops.failure_reason``), in the marker when a version exists, and in the
  Prefect report; the flow run ends Failed — exit 1. (2: a command-line usage error.)

The data decides what depends on it, unless set explicitly: the image size (``data.image_size: auto``, the
default: a source whose images all have one size keeps it; mixed sizes are resized to the most common one, and
the log says so; :mod:`detoxops.data.sizes`), the purifier (DataElixir's: ``dataelixir.purifier`` or
``diffusion.purifier`` when set, else the one its profile was validated with — ``cifar10-32-v2`` for 32x32 — else
the one shipped for that size — ``digits-16`` for 16x16 —, else the check stops before any training with the
command that trains one), the victim's input size and class count, its architecture (``victim.arch: auto``:
``fast_cnn`` for 32-px sets of at least 5,000 training images, else ``small_cnn``) and DataElixir's settings
(``dataelixir.profile: auto``: the CPU setting validated for the purifier's size). Every stage logs its progress with an
ETA and the check ends with the time each stage took.

    python -m flows.ingestion_check --source PATH [--params params.yaml] [--set key=value ...] [--dvc-root DIR]
    python -m flows.ingestion_check --source PATH --serve [--cron "0 * * * *"] [--name ingestion-check]

``--serve`` creates a deployment with that cron schedule and keeps serving its runs (needs a Prefect server:
``prefect server start`` and ``PREFECT_API_URL``; see docs/platform.md). Budgets are the demo's
(``params.demo.yaml`` but its ``data`` section); ``--set`` overrides them. Heavy tasks are cached and DataElixir's work
folders are keyed by data, models and settings: re-checking an unchanged source is cheap, and a re-run after a
failed one resumes (or starts clean when something changed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

# relative params paths resolve under this module's PROJECT_ROOT (a test points it at a user's project)
from tasks import DEMO_OVERLAY, DEMO_OVERLAY_SKIP, PROJECT_ROOT, configure_environment, project_path

configure_environment()

from prefect import flow  # noqa: E402
from prefect.states import Failed  # noqa: E402

from detoxops.config import load_params  # noqa: E402

DEPLOYMENT_NAME = "ingestion-check"
# exit statuses of the CLI, so a scheduler can tell "poisoned" from "broken" (argparse's usage errors exit 2)
EXIT_PASSED = 0
EXIT_ERROR = 1
EXIT_QUARANTINED = 3
DEFAULT_CRON = "0 * * * *"
FLOW = "ingestion_check"  # MLflow experiment <prefix>/ingestion_check


@flow(name="ingestion-check", log_prints=True)
def ingestion_check(
    source: str | None = None,
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    dvc_root: str | None = None,
    workers: int = 1,
) -> Any:
    """Check ``source`` (default ``params.data.source``); returns the check record when it passed, a Failed
    state carrying it when the dataset was quarantined. Any error ends the run Failed too (the exception), after
    the check was recorded as ``failed`` with its reason (MLflow, the marker when a version exists, Prefect).
    ``workers`` > 1 splits DataElixir's candidate shards over that many tasks (``flows.sanitize``'s scale-out)."""
    from tasks.ingestion_tasks import check_markdown, record_failed_check

    started = time.perf_counter()
    stages: dict[str, float] = {}
    ctx: dict[str, Any] = {"source": source}
    try:
        return _check(source, params_path, list(overrides or []), dvc_root, stages, ctx, started, workers)
    except Exception as exc:
        params = ctx.get("params")
        record = record_failed_check(
            flow=FLOW, source=str(ctx.get("source") or source or "params.data.source"), error=exc, params=params,
            dataset=ctx.get("dataset"), data_version=ctx.get("data_version"), stages=stages,
            seconds=time.perf_counter() - started,
            runs_root=project_path(params.tracking.runs_dir, PROJECT_ROOT) if params is not None else None,
        )
        print("\n" + check_markdown(record))
        raise


def _check(source: str | None, params_path: str, overrides: list[str], dvc_root: str | None,
           stages: dict[str, float], ctx: dict[str, Any], started: float, workers: int = 1) -> Any:
    from tasks.data_tasks import dataset_identity, version_dataset
    from tasks.ingestion_tasks import (
        check_targets,
        purifier_for_check,
        record_ingestion_check,
    )
    from tasks.progress import stage_progress
    from tasks.tracking import setup_tracking

    # the demo's reduced DataElixir budget (params.yaml holds the paper settings, hours per 1,000 images on a CPU)
    params = load_params(project_path(params_path, PROJECT_ROOT), overrides, overlay=DEMO_OVERLAY,
                         overlay_skip=DEMO_OVERLAY_SKIP)
    ctx["params"] = params
    source = str(source or params.data.source)
    ctx["source"] = source
    uri = setup_tracking(params.tracking)
    data_root = project_path(params.data.root, PROJECT_ROOT).resolve()
    runs_root = project_path(params.tracking.runs_dir, PROJECT_ROOT)
    repo_root = _repo_root(dvc_root, data_root)

    # what the data is decides the image size and the purifier, unless set explicitly (before any heavy work)
    with stage_progress("inspect", stages):
        params, resolved, expected, purifier = _inspect(params, source)
        ctx["params"] = params

    with stage_progress("ingest", stages):
        ingested = _ingest(params, resolved, data_root, ctx)
    info = ingested.get("info") or {}
    size = int((info.get("image_shape") or [0])[0])
    if purifier is None or size != int(expected or 0):
        path, origin = purifier_for_check(params, size)
        purifier = {"path": path, "origin": origin}
    image_note = f"{size}x{size}, {len(info.get('class_names') or [])} classes"
    print(f"dataset {ingested['name']} @ {ingested['hash'][:12]}: {image_note}; purifier {purifier['origin']} "
          f"({purifier['path']})")

    with stage_progress("dvc-version", stages):
        dvc = version_dataset(ingested["path"], str(repo_root), params.tracking.dvc_remote)
    data_version = dataset_identity(ingested, dvc)
    ctx["data_version"] = data_version
    victim, sanitized = _scan(params, ingested["path"], purifier["path"], data_root, runs_root, stages, workers)
    targets = check_targets(sanitized)
    purified_dvc = None
    if targets:  # the purified set becomes a version of its own, next to the quarantined one
        with stage_progress("dvc-version-purified", stages):
            purified_dvc = version_dataset(sanitized["path"], str(repo_root), params.tracking.dvc_remote)
    record = record_ingestion_check(
        flow=FLOW, params=params, source=source, resolved_source=resolved, dataset=ingested, dvc=dvc,
        data_version=data_version, sanitized=sanitized, victim=victim, purifier=purifier,
        purified_dvc=purified_dvc, seconds=time.perf_counter() - started, runs_root=runs_root,
        stages=stages, image_size=image_note,
    )
    return _verdict(record, targets, stages, uri)


def _scan(params, version: str, purifier: str, data_root: Path, runs_root: Path,
          stages: dict[str, float], workers: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """The victim and DataElixir's result. DataElixir labels candidates with a model trained on the very data it
    checks (no attack is known here); its input size and class count are the data's."""
    from flows.runners import candidates_in_parallel
    from tasks.progress import stage_progress
    from tasks.sanitize_tasks import sanitize_dataset
    from tasks.victim_tasks import train_victim

    victim_cfg = params.victim.model_dump(mode="json")
    with stage_progress("victim", stages):
        victim = train_victim(version, victim_cfg, None, str(runs_root / "victims"))
    with stage_progress("dataelixir", stages):
        candidates_in_parallel(version, victim["path"], purifier, params, str(data_root), workers)
        sanitized = sanitize_dataset(version, victim["path"], purifier, params.dataelixir.model_dump(mode="json"),
                                     str(data_root), victim_cfg=victim_cfg, precision=params.diffusion.precision)
    return victim, sanitized


def _verdict(record: dict[str, Any], targets: list[int], stages: dict[str, float], uri: str) -> Any:
    """Print the check's report; a dataset with a target label is a failed run (quarantined), else the record."""
    from tasks.ingestion_tasks import check_markdown
    from tasks.progress import format_timings

    print("\n" + check_markdown(record))
    print(f"time per stage:\n{format_timings(stages)}")
    print(f"MLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    if targets:
        return Failed(message=f"dataset {record['dataset']} @ {record['data_version']} quarantined: backdoor target "
                              f"label(s) {targets} detected; purified version {record['purified_version']}",
                      data=record)
    return record


def _repo_root(dvc_root: str | None, data_root: Path) -> Path:
    """The DVC repository the check versions into: ``--dvc-root`` or the nearest one above ``data.root``."""
    from tasks.ingestion_tasks import default_dvc_root

    repo_root = Path(dvc_root).resolve() if dvc_root else default_dvc_root(data_root)
    if repo_root != data_root and repo_root not in data_root.parents:
        raise ValueError(f"data.root {data_root} is outside the DVC repository {repo_root}: the check versions "
                         "what it ingests; pass --dvc-root (a folder above data.root) or move data.root")
    return repo_root


def _ingest(params, resolved: str, data_root: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    """Ingest the source; a version this run created is removed again when the check cannot train on it."""
    from detoxops.data.sources import source_name
    from detoxops.data.store import is_version_dir
    from tasks.data_tasks import ingest_dataset
    from tasks.ingestion_tasks import refuse_untrainable

    name_dir = data_root / source_name(resolved)
    before = {p.name for p in name_dir.iterdir() if is_version_dir(p)} if name_dir.is_dir() else set()
    ingested = ingest_dataset(resolved, params.data.model_dump(mode="json"), str(data_root))
    ctx["dataset"] = ingested
    refuse_untrainable(ingested, created=Path(ingested["path"]).name not in before)
    return ingested


def _inspect(params, source: str) -> tuple[Any, str, int | None, dict[str, str] | None]:
    """``(params with data.image_size decided, resolved source, expected image size, purifier or None)``."""
    from detoxops.data.sizes import decide_image_size
    from tasks.ingestion_tasks import purifier_for_check, resolve_source

    resolved = resolve_source(source)
    decision = decide_image_size(resolved, params.data.image_size, params.data.limits)
    params = params.model_copy(update={"data": params.data.model_copy(update={"image_size": decision.image_size})})
    print(decision.note)
    expected = decision.expected
    purifier = None
    if expected is not None:
        path, origin = purifier_for_check(params, int(expected))
        purifier = {"path": path, "origin": origin}
    return params, resolved, expected, purifier


def deployment_options(
    source: str | None,
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    dvc_root: str | None = None,
    cron: str = DEFAULT_CRON,
    name: str = DEPLOYMENT_NAME,
    workers: int = 1,
) -> dict[str, Any]:
    """Keyword arguments of ``ingestion_check.serve`` / ``.to_deployment`` for a scheduled check of ``source``."""
    return {
        "name": name,
        "cron": cron,
        "parameters": {"source": source, "params_path": params_path, "overrides": list(overrides or []),
                       "dvc_root": dvc_root, "workers": workers},
        "tags": ["detoxops", "ingestion-check"],
        "description": f"Scheduled DataElixir ingestion check of {source or 'params.data.source'} ({cron}).",
    }


def main(argv: list[str] | None = None) -> int:
    from flows.runners import add_runner_arguments, candidate_workers, make_task_runner, worker_api

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
    add_runner_arguments(ap, candidate_workers=True)
    args = ap.parse_args(argv)
    workers = candidate_workers(args)
    check = ingestion_check if args.runner == "thread" else ingestion_check.with_options(  # thread: the default
        task_runner=make_task_runner(args.runner, args.dask_workers, args.dask_address))
    with worker_api(args.runner):
        if args.serve:
            check.serve(**deployment_options(args.source, args.params, args.overrides, args.dvc_root, args.cron,
                                             args.name, workers))
            return 0
        state = check(args.source, args.params, args.overrides, args.dvc_root, workers, return_state=True)
    return exit_code(state)


def exit_code(state: Any) -> int:
    """The CLI's exit status for a finished check run: EXIT_PASSED, EXIT_QUARANTINED or EXIT_ERROR."""
    if state.is_completed():
        return EXIT_PASSED
    result = state.result(raise_on_failure=False)
    if isinstance(result, dict) and result.get("status") == "quarantined":
        print(f"ingestion check: QUARANTINED (exit {EXIT_QUARANTINED}): {state.message}", file=sys.stderr)
        return EXIT_QUARANTINED
    reason = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else state.message
    print(f"ingestion check: FAILED, no verdict (exit {EXIT_ERROR}): {reason}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
