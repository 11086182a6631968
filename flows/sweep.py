"""SampDetox parameter sweep with a stated selection rule, scored on a validation split, checked on a held-out one:
:func:`detoxops.operations.sweep` (the same as ``detoxops detox sweep``) with the points as cached Prefect tasks
(``tasks.sweep_tasks.evaluate_point``) on the flow's task runner, tracked in MLflow (``tasks.records.log_sweep``).

1. per attack (``--attacks``, default ``params.benchmark.attacks``): poisoned set + victim (cached tasks);
2. the clean test split is divided per class into ``val`` (``data.val_fraction``) and a held-out ``test``
   (triggered images follow their clean source, see ``tasks/sweep_tasks.py``);
3. every grid point (a set of ``sampdetox.*`` values on top of ``params.sampdetox``) and the no-defense
   baseline are scored on ``val`` for every attack: one MLflow child run per point (params = the point,
   metrics mean CA / PA / ASR, CA drop, per-attack ``<attack>.ca|pa|asr``);
4. **selection rule** (``detoxops.defenses.selection.select_setting``): the point with the lowest mean ASR
   over the attacks subject to a mean CA drop vs no defense ≤ ``--max-ca-drop`` points (default 3); ties
   within 0.01 ASR go to the smaller drop; if no point meets the bound, the smallest drop (and it says so);
5. the chosen point (and the baseline) evaluated once on the held-out ``test`` split → child run ``heldout``,
   ``results/sweep.md`` (percent) and ``results/sweep_result.json`` (fractions; the chosen ``--set`` overrides) on
   the parent.

Grid: ``--grid sampdetox.t2=80,120 --grid localiser=diff,pixel_ssim`` (repeatable; values parsed as YAML
scalars; the ``sampdetox.`` prefix is optional) and/or ``--spec sweep.yaml`` with
``{grid: {t1: [10, 20], ...}, attacks: [...], max_ca_drop: 3}``; without either, ``params.sweep`` (whose
default grid is ``DEFAULT_GRID``).

    python -m flows.sweep [--params params.yaml] [--set key=value ...] [--grid key=v1,v2 ...] [--spec FILE]
                          [--attacks badnets,blended] [--max-ca-drop 3] [--max-images N] [--runner thread|dask]
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

from detoxops.config import SweepConfig, load_params  # noqa: E402
from detoxops.operations.sweep import BASELINE, normalise_grid, parse_grid_args  # noqa: E402

__all__ = ["sweep", "DEFAULT_GRID", "normalise_grid", "parse_grid_args", "main"]

# The swept axes of issue #10 (t1, t_loc, t2, localiser, stage-2 option): 2^5 = 32 points; params.sweep.grid.
DEFAULT_GRID: dict[str, list[Any]] = SweepConfig().grid


@flow(name="sweep", log_prints=True)
def sweep(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    grid: dict[str, Any] | None = None,
    attacks: list[str] | None = None,
    max_ca_drop: float | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """:func:`detoxops.operations.sweep` with its points as cached Prefect tasks, tracked in MLflow. Returns
    :meth:`~detoxops.operations.sweep.SweepOutcome.result` (rates as fractions) and ``run_id``."""
    from prefect.artifacts import create_markdown_artifact

    from detoxops.operations.sweep import sweep as run_sweep
    from tasks.preparation import prepare_attacks
    from tasks.records import log_sweep
    from tasks.sweep_tasks import task_scorer
    from tasks.tracking import setup_tracking

    params = load_params(project_path(params_path), list(overrides or []))
    setup_tracking(params.tracking)
    attacks = list(attacks or params.sweep.attacks or params.benchmark.attacks)
    started = time.perf_counter()
    prep = prepare_attacks(params, attacks)
    score = task_scorer(prep["attacks"], prep["purifier"]["path"], params, max_images)
    outcome = run_sweep(params, attacks, score, grid=grid, max_ca_drop=max_ca_drop,
                        out=project_path(params.tracking.runs_dir) / "sweep")
    seconds = time.perf_counter() - started

    run_id = log_sweep(params, outcome, prep["ingested"], seconds, BASELINE)
    markdown = outcome.markdown()
    create_markdown_artifact(markdown=markdown, key="sampdetox-sweep", description="SampDetox sweep and choice")
    print("\n" + markdown + f"\n\n{seconds:.0f} s; MLflow run {run_id}")
    print("apply with: " + " ".join(f"--set {o}" for o in outcome.overrides))
    return {**outcome.result(), "run_id": run_id}


def main(argv: list[str] | None = None) -> int:
    import yaml

    from flows.runners import add_runner_arguments, make_task_runner, worker_api

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--grid", action="append", default=[], help="axis, e.g. sampdetox.t2=80,120 (repeatable)")
    ap.add_argument("--spec", help="YAML/JSON sweep spec: {grid: {...}, attacks: [...], max_ca_drop: 3}")
    ap.add_argument("--attacks", help="comma-separated (default: benchmark.attacks)")
    ap.add_argument("--max-ca-drop", type=float, default=None, help="CA-drop bound of the rule, points (default 3)")
    ap.add_argument("--max-images", type=int, default=0, help="images per split and attack (0 = all)")
    add_runner_arguments(ap)
    args = ap.parse_args(argv)
    spec: dict[str, Any] = yaml.safe_load(Path(args.spec).read_text()) if args.spec else {}
    grid = {**(spec.get("grid") or {}), **parse_grid_args(args.grid)} or None
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else spec.get("attacks")
    max_ca_drop = args.max_ca_drop if args.max_ca_drop is not None else spec.get("max_ca_drop")
    runner = make_task_runner(args.runner, args.dask_workers, args.dask_address)
    with worker_api(args.runner):
        sweep.with_options(task_runner=runner)(args.params, args.overrides, grid, attacks, max_ca_drop,
                                               args.max_images or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
