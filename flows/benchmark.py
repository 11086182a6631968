"""The attack × defense matrix (the papers' table style): CA / PA / ASR of a victim trained under every attack of
``params.benchmark.attacks``, behind every defense of ``params.benchmark.defenses``.

ingest → purifier → per attack: poison → train victim → CA / PA / ASR per defense (``detox-eval``) → MLflow
(experiment ``detoxops/benchmark``: a parent run with the matrix as ``results/benchmark.md`` / ``.csv`` / a
logged table, one nested run per attack × defense) + a Prefect markdown artifact ``benchmark-matrix``.

    python -m flows.benchmark [--params params.yaml] [--set key=value ...] [--attacks badnets,blended]
                              [--defenses none,sampdetox] [--max-images N] [--runner thread|dask]

Poisoned sets, victims, the purifier and evaluations are the cached tasks of ``tasks/`` (inputs + code
version): a matrix that shares attacks with an earlier run (or with the demo) re-uses those stages.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tasks import configure_environment, project_path

configure_environment()

from prefect import flow  # noqa: E402

from detoxops.config import load_params  # noqa: E402
from tasks.preparation import prepare_attacks  # noqa: E402 (re-exported: its old home)

__all__ = ["benchmark", "prepare_attacks", "matrix_markdown", "main"]

METRICS = ("ca", "pa", "asr")


def matrix_markdown(rows: list[dict[str, Any]], attacks: list[str], defenses: list[str]) -> str:
    """Rows = attacks (+ the mean), column groups = defenses, cells CA / PA / ASR in % (the rows': fractions)."""
    from detoxops.metrics import percent_rates

    by = {(r["attack"], r["defense"]): percent_rates(r) for r in rows}
    head = "| Attack | " + " | ".join(f"{d} {m.upper()}" for d in defenses for m in METRICS) + " |"
    sep = "|---|" + "---:|" * (len(defenses) * len(METRICS))
    lines = [head, sep]

    def cell(v: Any) -> str:
        return "-" if v is None or v != v else f"{v:.1f}"

    for a in attacks:
        lines.append(f"| {a} | " + " | ".join(cell(by.get((a, d), {}).get(m)) for d in defenses for m in METRICS)
                     + " |")
    means = []
    for d in defenses:
        for m in METRICS:
            vals = [by[(a, d)][m] for a in attacks if (a, d) in by and by[(a, d)].get(m) == by[(a, d)].get(m)]
            means.append(cell(sum(vals) / len(vals)) if vals else "-")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines)


@flow(name="benchmark", log_prints=True)
def benchmark(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    attacks: list[str] | None = None,
    defenses: list[str] | None = None,
    max_images: int | None = 200,
) -> dict[str, Any]:
    """Run the matrix; returns ``{"rows", "markdown", "run_id"}`` (rows: attack, defense, CA / PA / ASR as fractions;
    the markdown in percent)."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.detox_tasks import evaluate_defenses_task
    from tasks.records import log_benchmark
    from tasks.tracking import setup_tracking

    params = load_params(project_path(params_path), list(overrides or []))
    setup_tracking(params.tracking)
    attacks = list(attacks or params.benchmark.attacks)
    defenses = list(defenses or params.benchmark.defenses)
    runs_root = project_path(params.tracking.runs_dir)
    out_dir = runs_root / "benchmark"
    started = time.perf_counter()

    prep = prepare_attacks(params, attacks)
    sampdetox_cfg = params.sampdetox.model_dump(mode="json")
    eval_f = {
        name: evaluate_defenses_task.submit(
            a["poisoned"]["path"], a["victim"]["path"], prep["purifier"]["path"], defenses, sampdetox_cfg,
            a["attack_cfg"], max_images, str(out_dir / "samples" / name), params.data.model_dump(mode="json"))
        for name, a in prep["attacks"].items()
    }
    rows = []
    for name in attacks:
        for r in eval_f[name].result():
            rows.append({"attack": name, **r})
    seconds = time.perf_counter() - started
    markdown = matrix_markdown(rows, attacks, defenses)

    _write_matrix(rows, markdown, out_dir)

    run_id = log_benchmark(params, rows, attacks, defenses, max_images, seconds, prep["ingested"],
                           prep["purifier"]["origin"], out_dir)
    create_markdown_artifact(markdown=f"# Attack × defense (CA / PA / ASR %)\n\n{markdown}\n",
                             key="benchmark-matrix", description="attack × defense matrix")
    print("\n" + markdown + f"\n\n{seconds:.0f} s; MLflow run {run_id}")
    return {"rows": rows, "markdown": markdown, "run_id": run_id}


def _write_matrix(rows: list[dict[str, Any]], markdown: str, out_dir: Path) -> None:
    """``benchmark.md`` and ``benchmark.csv`` (one row per attack × defense, rates in percent) in ``out_dir``."""
    import csv

    from detoxops.metrics import percent_rates

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.md").write_text(markdown + "\n")
    cols = ["attack", "defense", "ca", "pa", "asr", "images_per_s", "seconds", "n_clean", "n_poisoned"]
    with (out_dir / "benchmark.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([percent_rates(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    from flows.runners import add_runner_arguments, make_task_runner, worker_api

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--attacks", help="comma-separated (default: benchmark.attacks)")
    ap.add_argument("--defenses", help="comma-separated (default: benchmark.defenses)")
    ap.add_argument("--max-images", type=int, default=200, help="clean / triggered test images per attack (0 = all)")
    add_runner_arguments(ap)
    args = ap.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    runner = make_task_runner(args.runner, args.dask_workers, args.dask_address)
    with worker_api(args.runner):
        benchmark.with_options(task_runner=runner)(
            args.params, args.overrides, split(args.attacks), split(args.defenses), args.max_images or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
