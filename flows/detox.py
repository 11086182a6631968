"""SampDetox evaluation under a set of attacks: CA / PA / ASR per attack × defense, recorded in MLflow.

ingest → DVC version → purifier → per attack: poison (``params.attack`` with that attack's name and options) →
train the backdoored victim → evaluate every defense on the clean and triggered test images → results table.
MLflow (``detoxops/detox``): a parent run (params, dataset input, ``results/results.csv``), a nested run per
attack (kind ``attack``) and under it one per defense (kind ``defense``; metrics ``ca`` / ``pa`` / ``asr`` as
fractions, sample grids) — the rows the dashboard's *Defense results* page tabulates.

    python -m flows.detox [--attacks badnets blended ...] [--defenses none sampdetox ...] [--source SRC]
                          [--params params.yaml] [--set key=value ...] [--max-images N] [--dvc-root DIR]

Attacks / defenses default to ``params.benchmark.attacks`` / ``.defenses`` (``--set
'benchmark.attacks=[badnets,sig]'`` works too); ``none`` (no defense, the baseline) is always evaluated. Demo-sized
budgets (``flows.demo.DEMO_OVERRIDES``); ``--set`` overrides them. Heavy tasks are cached per attack.
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

from detoxops.config import load_params  # noqa: E402
from flows.demo import DEMO_OVERRIDES  # noqa: E402

FLOW = "detox"


@flow(name="detox", log_prints=True)
def detox(
    attacks: list[str] | None = None,
    defenses: list[str] | None = None,
    source: str | None = None,
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    max_images: int | None = 200,
    dvc_root: str | None = None,
) -> list[dict[str, Any]]:
    """Returns the results table: one row per attack × defense (CA / PA / ASR in %)."""
    import mlflow

    from tasks.attack_tasks import poison_dataset
    from tasks.data_tasks import dataset_identity, ingest_dataset
    from tasks.detox_tasks import evaluate_defenses_task, log_defense_rows
    from tasks.ingestion_tasks import version_best_effort
    from tasks.purifier_tasks import get_purifier
    from tasks.report_tasks import format_table, results_table, write_table
    from tasks.tracking import log_dataset, run, setup_tracking
    from tasks.victim_tasks import train_victim

    params = load_params(_abs(params_path), DEMO_OVERRIDES + list(overrides or []))
    attacks = list(attacks or params.benchmark.attacks)
    defenses = list(defenses or params.benchmark.defenses)
    defenses = ["none", *(d for d in dict.fromkeys(defenses) if d != "none")]  # the baseline first, no repeats
    source = str(source or params.data.source)
    uri = setup_tracking(params.tracking)
    data_root = str(_abs(params.data.root))
    runs_root = _abs(params.tracking.runs_dir)
    sampdetox_cfg = params.sampdetox.model_dump(mode="json")
    started = time.perf_counter()

    ingested = ingest_dataset(source, params.data.model_dump(mode="json"), data_root)
    dvc = version_best_effort(ingested["path"], dvc_root, params.tracking.dvc_remote)
    data_version = dataset_identity(ingested, dvc)
    purifier = get_purifier(params.diffusion.model_dump(mode="json"), ingested["path"], str(runs_root / "purifiers"))
    out = runs_root / FLOW / data_version[:16]

    per_attack: list[tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = []
    for name in attacks:
        attack_cfg = params.attack.model_copy(update={"name": name}).model_dump(mode="json")
        poisoned = poison_dataset(ingested["path"], attack_cfg, data_root)
        victim = train_victim(poisoned["path"], params.victim.model_dump(mode="json"), attack_cfg,
                              str(runs_root / "victims"))
        rows = evaluate_defenses_task(poisoned["path"], victim["path"], purifier["path"], defenses, sampdetox_cfg,
                                      attack_cfg, max_images, str(out / name))
        per_attack.append((name, poisoned, victim, rows))
    table = [row for name, _, _, rows in per_attack for row in results_table(rows, None, name)]
    seconds = time.perf_counter() - started

    tags = {"detoxops.dataset": ingested["name"], "detoxops.data_version": data_version,
            "detoxops.seed": params.attack.seed, "detoxops.model": params.victim.arch}
    prefix = params.tracking.experiment_prefix
    with run(FLOW, f"detox {'+'.join(attacks)}", kind="report", prefix=prefix, tags=tags,
             params=params.to_dict()) as parent:
        log_dataset(ingested["path"], ingested["name"], data_version, "evaluation")
        mlflow.log_params({"detox.attacks": ",".join(attacks), "detox.defenses": ",".join(defenses),
                           "detox.max_images": str(max_images)})
        mlflow.log_metric("seconds", seconds)
        mlflow.log_artifact(str(write_table(table, out / "results.csv")), "results")
        for name, poisoned, victim, rows in per_attack:
            attack_tags = {**tags, "detoxops.attack": name, "detoxops.poisoned_version": poisoned["hash"][:12]}
            with run(FLOW, f"attack={name}", kind="attack", prefix=prefix, parent_run_id=parent.info.run_id,
                     tags=attack_tags) as attack_run:
                mlflow.log_metrics({"n_poisoned": poisoned["n_poisoned"], "n_train": poisoned["n_train"],
                                    "victim_seconds": float(victim.get("seconds") or 0.0)})
                log_defense_rows(rows, FLOW, attack_run.info.run_id, attack_tags, prefix)

    print("\n" + format_table(table))
    print(f"\ndata version {data_version}; {len(attacks)} attack(s) x {len(defenses)} defense(s); {seconds:.0f} s")
    print(f"\nMLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    return table


def _abs(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", nargs="+", default=None, help="attack names (default: benchmark.attacks)")
    ap.add_argument("--defenses", nargs="+", default=None, help="defense names (default: benchmark.defenses)")
    ap.add_argument("--source", default=None, help="dataset source (default: data.source)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--max-images", type=int, default=200, help="test images per split for the evaluation")
    ap.add_argument("--dvc-root", default=None, help="DVC repository (default: the nearest .dvc/ above the data)")
    args = ap.parse_args(argv)
    detox(args.attacks, args.defenses, args.source, args.params, args.overrides, args.max_images, args.dvc_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
