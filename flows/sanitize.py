"""DataElixir end to end: sanitise a training set, retrain a clean model on it, register that model.

ingest → DVC version → (poison with ``params.attack``, for evaluation; ``--no-poison`` to sanitise the data as
it is) → train the victim on it → purifier → DataElixir (target label, flagged samples, purified set, DVC-versioned)
→ train a clean model on the purified set → evaluate both models → MLflow (``detoxops/sanitize``): the victim's
CA / PA / ASR, DataElixir's TPR / FPR / target label and the retrained model's ACC / ASR, the clean model
registered as ``detoxops-clean-model`` (alias ``champion``).

    python -m flows.sanitize [--source SRC] [--no-poison] [--params params.yaml] [--set key=value ...]
                             [--max-images N] [--dvc-root DIR] [--workers N] [--runner thread|dask]

``--workers N`` splits DataElixir's costly stage (the candidate sets, ``dataelixir.shard_size`` images per shard)
into N tasks over disjoint shards; on ``--runner dask`` (a local cluster of ``--dask-workers`` processes, or
``--dask-address``) they run in parallel processes or machines that share the data root, and the DataElixir task
then only loads their shards. The result is the same as with one worker (each shard draws its own noise).

Demo-sized budgets (``params.demo.yaml`` but its ``data`` section); ``--set`` overrides them. Heavy tasks are cached.

``sanitize_version(version, victim, purifier)`` is DataElixir alone on a stored version with a given victim: the
Prefect counterpart of ``detoxops sanitize`` and of the ``sanitize`` stage of ``dvc.yaml`` (the same operation,
``detoxops.operations.sanitize``, so the same artifacts: tests/platform/test_sanitize_paths.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from tasks import DEMO_OVERLAY, DEMO_OVERLAY_SKIP, configure_environment, project_path

configure_environment()

from prefect import flow  # noqa: E402

from detoxops.config import load_params  # noqa: E402

FLOW = "sanitize"
CLEAN_MODEL = "detoxops-clean-model"


@flow(name="sanitize", log_prints=True)
def sanitize(source: str | None = None, params_path: str = "params.yaml", overrides: list[str] | None = None,
             poison: bool = True, max_images: int | None = 200, dvc_root: str | None = None,
             workers: int = 1) -> dict[str, Any]:
    """Returns the summary: target label, TPR / FPR (with ground truth), ACC / ASR before and after, the
    registered model version and the results table (rates as fractions; printed and ``results.csv`` in percent)."""
    from flows.runners import candidates_in_parallel
    from tasks.attack_tasks import poison_dataset
    from tasks.data_tasks import dataset_identity, ingest_dataset
    from tasks.ingestion_tasks import version_best_effort
    from tasks.purifier_tasks import get_purifier
    from tasks.records import log_sanitize_flow
    from tasks.report_tasks import format_table, write_table
    from tasks.sanitize_tasks import sanitize_dataset
    from tasks.tracking import setup_tracking
    from tasks.victim_tasks import train_victim

    params = load_params(project_path(params_path), list(overrides or []), overlay=DEMO_OVERLAY,
                         overlay_skip=DEMO_OVERLAY_SKIP)
    source = str(source or params.data.source)
    uri = setup_tracking(params.tracking)
    data_root = str(project_path(params.data.root))
    runs_root = project_path(params.tracking.runs_dir)
    attack_cfg = params.attack.model_dump(mode="json") if poison else None
    victim_cfg = params.victim.model_dump(mode="json")
    started = time.perf_counter()

    ingested = ingest_dataset(source, params.data.model_dump(mode="json"), data_root)
    dvc = version_best_effort(ingested["path"], dvc_root, params.tracking.dvc_remote)
    data_version = dataset_identity(ingested, dvc)
    data = poison_dataset(ingested["path"], attack_cfg, data_root)["path"] if poison else ingested["path"]
    victim = train_victim(data, victim_cfg, attack_cfg, str(runs_root / "victims"))
    purifier = get_purifier(params.diffusion.model_dump(mode="json"), ingested["path"], str(runs_root / "purifiers"),
                            params.dataelixir.model_dump(mode="json"))
    candidates_in_parallel(data, victim["path"], purifier["path"], params, data_root, workers)
    sanitized = sanitize_dataset(data, victim["path"], purifier["path"], params.dataelixir.model_dump(mode="json"),
                                 data_root, victim_cfg=victim_cfg, precision=params.diffusion.precision)
    purified_dvc = version_best_effort(sanitized["path"], dvc_root, params.tracking.dvc_remote)
    clean_model = train_victim(sanitized["path"], victim_cfg, None, str(runs_root / "victims"))

    out = runs_root / FLOW / data_version[:16]
    before, after = _before_after(params, data if poison else ingested["path"], attack_cfg, purifier["path"],
                                  {"victim": victim, "retrained": clean_model}, max_images, out)
    seconds = time.perf_counter() - started

    attack = params.attack.name if poison else None
    target = sanitized.get("target_label")
    table = _table(before, after, sanitized, poison)
    logged = log_sanitize_flow(FLOW, params, ingested, data_version, attack,
                               write_table(_csv_rows(table, attack), out / "results.csv"), seconds, before, after,
                               sanitized, purified_dvc, clean_model, out, CLEAN_MODEL)
    version, sanitize_run_id = logged["model_version"], logged["run_id"]

    print("\n" + format_table(_csv_rows(table, attack)) + f"\n\ndata version {data_version}; target label detected: "
          f"{target}; flagged {sanitized.get('n_flagged')}; {CLEAN_MODEL} v{version} (alias champion); {seconds:.0f} s"
          f"\n\nMLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    return {"target_label": target, "tpr": _finite(sanitized.get("tpr")), "fpr": _finite(sanitized.get("fpr")),
            "n_flagged": sanitized.get("n_flagged"), "before": before, "after": after,
            "purified_version": sanitized["path"], "model_name": CLEAN_MODEL, "model_version": version,
            "mlflow_run_id": sanitize_run_id, "table": table}


@flow(name="sanitize-version", log_prints=True)
def sanitize_version(version: str, victim: str, purifier: str | None = None, params_path: str = "params.yaml",
                     overrides: list[str] | None = None, out_root: str | None = None,
                     workers: int = 1) -> dict[str, Any]:
    """DataElixir alone on a stored dataset version with a given victim (what ``detoxops sanitize`` and the
    ``sanitize`` stage of ``dvc.yaml`` do): the purified set as a version under ``out_root`` (default
    ``data.root``), with the same artifacts. ``purifier`` ``None`` = DataElixir's purifier by the rule of
    ``tasks.purifier_tasks``.
    ``workers`` > 1: :func:`candidates_in_parallel` first; ``parallel_shards`` in the result lists the shards its
    tasks computed (empty when they were all stored already)."""
    from flows.runners import candidates_in_parallel
    from tasks.purifier_tasks import get_purifier
    from tasks.sanitize_tasks import sanitize_dataset

    params = load_params(project_path(params_path), list(overrides or []))
    runs_root = project_path(params.tracking.runs_dir)
    if purifier is None:
        purifier = get_purifier(params.diffusion.model_dump(mode="json"), version, str(runs_root / "purifiers"),
                                params.dataelixir.model_dump(mode="json"))["path"]
    out_root = str(out_root or project_path(params.data.root))
    parallel = candidates_in_parallel(version, victim, purifier, params, out_root, workers)
    result = sanitize_dataset(version, victim, purifier, params.dataelixir.model_dump(mode="json"), out_root,
                              victim_cfg=params.victim.model_dump(mode="json"), precision=params.diffusion.precision)
    return result | {"parallel_shards": parallel}


def _before_after(params, data: str, attack_cfg: dict[str, Any] | None, purifier: str, models: dict[str, dict],
                  max_images: int | None, out: Path) -> list[dict[str, Any]]:
    """The victim's and the retrained model's rows (fractions): CA / PA / ASR on the clean and triggered test splits
    of the poisoned version, or, with no attack, accuracy on the dataset's own test split."""
    from tasks.detox_tasks import evaluate_defenses_task
    from tasks.sanitize_tasks import accuracy_task

    data_cfg = params.data.model_dump(mode="json")  # its val_fraction / seed: the held-out side reported on
    if attack_cfg is None:
        return [accuracy_task(data, m["path"], data_cfg, max_images) for m in models.values()]
    return [evaluate_defenses_task(data, m["path"], purifier, ["none"], params.sampdetox.model_dump(mode="json"),
                                   attack_cfg, max_images, str(out / name), data_cfg, params.diffusion.precision)[0]
            for name, m in models.items()]


def _table(before: dict[str, Any], after: dict[str, Any], sanitized: dict[str, Any], poison: bool) -> list[dict]:
    return [
        {"model": "victim (poisoned data)" if poison else "victim", "acc": before["ca"], "pa": before.get("pa"),
         "asr": before.get("asr"), "tpr": None, "fpr": None},
        {"model": "retrained (purified data)", "acc": after["ca"], "pa": after.get("pa"), "asr": after.get("asr"),
         "tpr": _finite(sanitized.get("tpr")), "fpr": _finite(sanitized.get("fpr"))},
    ]


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _csv_rows(table: list[dict[str, Any]], attack: str | None) -> list[dict[str, Any]]:
    return [{"attack": attack, "defense": row["model"], "ca": row["acc"], **row} for row in table]


def main(argv: list[str] | None = None) -> int:
    from flows.runners import add_runner_arguments, candidate_workers, make_task_runner, worker_api

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=None, help="dataset source (default: data.source)")
    ap.add_argument("--no-poison", dest="poison", action="store_false",
                    help="sanitise the data as it is (no attack; no TPR / FPR / ASR)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--max-images", type=int, default=200, help="test images per split for the evaluation")
    ap.add_argument("--dvc-root", default=None, help="DVC repository (default: the nearest .dvc/ above the data)")
    add_runner_arguments(ap, candidate_workers=True)
    args = ap.parse_args(argv)
    workers = candidate_workers(args)
    runner = make_task_runner(args.runner, args.dask_workers, args.dask_address)
    with worker_api(args.runner):
        sanitize.with_options(task_runner=runner)(args.source, args.params, args.overrides, args.poison,
                                                  args.max_images, args.dvc_root, workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
