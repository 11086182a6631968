"""DataElixir end to end: sanitise a training set, retrain a clean model on it, register that model.

ingest → DVC version → (poison with ``params.attack``, for evaluation; ``--no-poison`` to sanitise the data as
it is) → train the victim on it → purifier → DataElixir (target label, flagged samples, purified set, DVC-versioned)
→ train a clean model on the purified set → evaluate both models → MLflow (``detoxops/sanitize``): the victim's
CA / PA / ASR, DataElixir's TPR / FPR / target label and the retrained model's ACC / ASR, the clean model
registered as ``detoxops-clean-model`` (alias ``champion``).

    python -m flows.sanitize [--source SRC] [--no-poison] [--params params.yaml] [--set key=value ...]
                             [--max-images N] [--dvc-root DIR]

Demo-sized budgets (``flows.demo.DEMO_OVERRIDES``); ``--set`` overrides them. Heavy tasks are cached.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from tasks import PROJECT_ROOT, configure_environment

configure_environment()

from prefect import flow  # noqa: E402

from detoxops.config import load_params  # noqa: E402
from flows.demo import DEMO_OVERRIDES  # noqa: E402

FLOW = "sanitize"
CLEAN_MODEL = "detoxops-clean-model"


@flow(name="sanitize", log_prints=True)
def sanitize(
    source: str | None = None,
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    poison: bool = True,
    max_images: int | None = 200,
    dvc_root: str | None = None,
) -> dict[str, Any]:
    """Returns the summary: target label, TPR / FPR (with ground truth), ACC / ASR before and after, the
    registered model version and the results table."""
    import mlflow

    from tasks.attack_tasks import poison_dataset
    from tasks.data_tasks import dataset_identity, ingest_dataset
    from tasks.detox_tasks import evaluate_defenses_task
    from tasks.ingestion_tasks import log_dataelixir_artifacts, version_best_effort
    from tasks.purifier_tasks import get_purifier
    from tasks.report_tasks import format_table, write_table
    from tasks.sanitize_tasks import accuracy_task, sanitize_dataset
    from tasks.tracking import log_dataset, register_model, run, setup_tracking
    from tasks.victim_tasks import train_victim

    params = load_params(_abs(params_path), DEMO_OVERRIDES + list(overrides or []))
    source = str(source or params.data.source)
    uri = setup_tracking(params.tracking)
    data_root = str(_abs(params.data.root))
    runs_root = _abs(params.tracking.runs_dir)
    attack_cfg = params.attack.model_dump(mode="json") if poison else None
    victim_cfg = params.victim.model_dump(mode="json")
    started = time.perf_counter()

    ingested = ingest_dataset(source, params.data.model_dump(mode="json"), data_root)
    dvc = version_best_effort(ingested["path"], dvc_root, params.tracking.dvc_remote)
    data_version = dataset_identity(ingested, dvc)
    data = poison_dataset(ingested["path"], attack_cfg, data_root)["path"] if poison else ingested["path"]
    victim = train_victim(data, victim_cfg, attack_cfg, str(runs_root / "victims"))
    purifier = get_purifier(params.diffusion.model_dump(mode="json"), ingested["path"], str(runs_root / "purifiers"))
    sanitized = sanitize_dataset(data, victim["path"], purifier["path"], params.dataelixir.model_dump(mode="json"),
                                 data_root, victim_cfg=victim_cfg)
    purified_dvc = version_best_effort(sanitized["path"], dvc_root, params.tracking.dvc_remote)
    clean_model = train_victim(sanitized["path"], victim_cfg, None, str(runs_root / "victims"))

    out = runs_root / FLOW / data_version[:16]
    if poison:  # CA / PA / ASR on the clean and triggered test splits of the poisoned version
        before, after = (
            evaluate_defenses_task(data, model["path"], purifier["path"], ["none"],
                                   params.sampdetox.model_dump(mode="json"), attack_cfg, max_images,
                                   str(out / name))[0]
            for name, model in (("victim", victim), ("retrained", clean_model))
        )
    else:  # no attack: accuracy on the dataset's own test split
        before, after = (accuracy_task(ingested["path"], model["path"], "test", max_images)
                         for model in (victim, clean_model))
    seconds = time.perf_counter() - started

    attack = params.attack.name if poison else None
    target = sanitized.get("target_label")
    table = [
        {"model": "victim (poisoned data)" if poison else "victim", "acc": before["ca"], "pa": before.get("pa"),
         "asr": before.get("asr"), "tpr": None, "fpr": None},
        {"model": "retrained (purified data)", "acc": after["ca"], "pa": after.get("pa"), "asr": after.get("asr"),
         "tpr": _finite(sanitized.get("tpr")), "fpr": _finite(sanitized.get("fpr"))},
    ]
    tags = {"detoxops.dataset": ingested["name"], "detoxops.data_version": data_version, "detoxops.attack": attack,
            "detoxops.seed": params.attack.seed, "detoxops.model": params.victim.arch}
    prefix = params.tracking.experiment_prefix
    with run(FLOW, f"sanitize {ingested['name']} {attack or 'no attack'}", kind="report", prefix=prefix,
             tags=tags, params=params.to_dict()) as parent:
        log_dataset(ingested["path"], ingested["name"], data_version, "training")
        mlflow.log_metric("seconds", seconds)
        mlflow.log_artifact(str(write_table(_csv_rows(table, attack), out / "results.csv")), "results")
        with run(FLOW, "victim", kind="victim", prefix=prefix,
                 parent_run_id=parent.info.run_id, tags=tags):
            mlflow.log_metrics(_fractions({"ca": before["ca"], "pa": before.get("pa"), "asr": before.get("asr")}))
        sanitize_tags = {
            **tags, "detoxops.defense": "dataelixir",
            "detoxops.target_label": target, "detoxops.status": "quarantined" if target is not None else "passed",
            "detoxops.purified_version": sanitized["path"],
            "detoxops.purified_data_version": (purified_dvc or {}).get("md5") or Path(sanitized["path"]).name,
        }
        with run(FLOW, "dataelixir", kind="sanitize", prefix=prefix,
                 parent_run_id=parent.info.run_id, tags=sanitize_tags) as r:
            metrics = _fractions({"tpr": sanitized.get("tpr"), "fpr": sanitized.get("fpr"), "acc": after["ca"],
                                  "pa": after.get("pa"), "asr": after.get("asr")})
            metrics["n_flagged"] = float(sanitized.get("n_flagged") or 0)
            mlflow.log_metrics(metrics)
            log_dataelixir_artifacts(sanitized, params.dataelixir.anomaly_threshold, out)
            mlflow.log_artifacts(clean_model["path"], "clean_model")
            model_tags = {"arch": clean_model.get("arch"), "trained_on": sanitized["path"], "target_label": target,
                          "data_version": sanitize_tags["detoxops.purified_data_version"]}
            version = register_model(f"runs:/{r.info.run_id}/clean_model", CLEAN_MODEL,
                                     tags={k: v for k, v in model_tags.items() if v is not None})
            sanitize_run_id = r.info.run_id

    print("\n" + format_table(_csv_rows(table, attack)))
    print(f"\ndata version {data_version}; target label detected: {target}; flagged {sanitized.get('n_flagged')}; "
          f"{CLEAN_MODEL} v{version} (alias champion); {seconds:.0f} s")
    print(f"\nMLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    return {"target_label": target, "tpr": _finite(sanitized.get("tpr")), "fpr": _finite(sanitized.get("fpr")),
            "n_flagged": sanitized.get("n_flagged"), "before": before, "after": after,
            "purified_version": sanitized["path"], "model_name": CLEAN_MODEL, "model_version": version,
            "mlflow_run_id": sanitize_run_id, "table": table}


@flow(name="sanitize-version", log_prints=True)
def sanitize_version(version: str, victim: str, purifier: str | None = None, params_path: str = "params.yaml",
                     overrides: list[str] | None = None, out_root: str | None = None) -> dict[str, Any]:
    """DataElixir alone on a stored dataset version with a given victim (what ``detoxops sanitize`` and the
    ``sanitize`` stage of ``dvc.yaml`` do): the purified set as a version under ``out_root`` (default
    ``data.root``), with the same artifacts. ``purifier`` ``None`` = the rule of ``tasks.purifier_tasks``."""
    from tasks.purifier_tasks import get_purifier
    from tasks.sanitize_tasks import sanitize_dataset

    params = load_params(_abs(params_path), list(overrides or []))
    runs_root = _abs(params.tracking.runs_dir)
    if purifier is None:
        purifier = get_purifier(params.diffusion.model_dump(mode="json"), version, str(runs_root / "purifiers"))["path"]
    return sanitize_dataset(version, victim, purifier, params.dataelixir.model_dump(mode="json"),
                            str(out_root or _abs(params.data.root)), victim_cfg=params.victim.model_dump(mode="json"))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _fractions(percent: dict[str, Any]) -> dict[str, float]:
    return {k: v / 100.0 for k, v in percent.items() if _finite(v) is not None}


def _csv_rows(table: list[dict[str, Any]], attack: str | None) -> list[dict[str, Any]]:
    return [{"attack": attack, "defense": row["model"], "ca": row["acc"], **row} for row in table]


def _abs(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=None, help="dataset source (default: data.source)")
    ap.add_argument("--no-poison", dest="poison", action="store_false",
                    help="sanitise the data as it is (no attack; no TPR / FPR / ASR)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--max-images", type=int, default=200, help="test images per split for the evaluation")
    ap.add_argument("--dvc-root", default=None, help="DVC repository (default: the nearest .dvc/ above the data)")
    args = ap.parse_args(argv)
    sanitize(args.source, args.params, args.overrides, args.poison, args.max_images, args.dvc_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
