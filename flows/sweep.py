"""SampDetox parameter sweep with a stated selection rule, scored on a validation split, checked on a held-out one.

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
   ``results/sweep.md`` and ``results/sweep_result.json`` (the chosen ``--set`` overrides) on the parent.

Grid: ``--grid sampdetox.t2=80,120 --grid localiser=diff,pixel_ssim`` (repeatable; values parsed as YAML
scalars; the ``sampdetox.`` prefix is optional) and/or ``--spec sweep.yaml`` with
``{grid: {t1: [10, 20], ...}, attacks: [...], max_ca_drop: 3}``; without either, ``params.sweep`` (whose
default grid is ``DEFAULT_GRID``).

    python -m flows.sweep [--params params.yaml] [--set key=value ...] [--grid key=v1,v2 ...] [--spec FILE]
                          [--attacks badnets,blended] [--max-ca-drop 3] [--max-images N] [--runner thread|dask]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tasks import configure_environment, project_path

configure_environment()

from prefect import flow  # noqa: E402

from detoxops.config import SweepConfig, load_params, parse_override  # noqa: E402
from flows.benchmark import prepare_attacks  # noqa: E402

__all__ = ["sweep", "DEFAULT_GRID", "normalise_grid", "parse_grid_args", "main"]

# The swept axes of issue #10 (t1, t_loc, t2, localiser, stage-2 option): 2^5 = 32 points; params.sweep.grid.
DEFAULT_GRID: dict[str, list[Any]] = SweepConfig().grid
BASELINE = "none"


def normalise_grid(grid: dict[str, Any]) -> dict[str, list[Any]]:
    """Strip ``sampdetox.`` prefixes, make scalars one-element lists, and validate every value against
    ``SampDetoxConfig`` (a bad key or value fails before anything runs)."""
    from detoxops.config import ConfigError, SampDetoxConfig

    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        name = key.removeprefix("sampdetox.")
        if name not in SampDetoxConfig.model_fields:
            raise ConfigError(f"sweep grid: sampdetox.{name}: unknown key")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"sweep grid: sampdetox.{name}: no values")
        for v in values:
            try:
                SampDetoxConfig(**{name: v})
            except ValueError as exc:
                raise ConfigError(f"sweep grid: sampdetox.{name}={v!r}: {exc}") from None
        out[name] = values
    return out


def parse_grid_args(items: list[str]) -> dict[str, list[Any]]:
    """``["sampdetox.t2=80,120", "localiser=diff"]`` → ``{"sampdetox.t2": [80, 120], "localiser": ["diff"]}``."""
    import yaml

    grid: dict[str, list[Any]] = {}
    for item in items:
        path, _ = parse_override(item.split("=", 1)[0] + "=0")
        raw = item.split("=", 1)[1]
        grid[".".join(path)] = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
    return grid


@flow(name="sweep", log_prints=True)
def sweep(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    grid: dict[str, Any] | None = None,
    attacks: list[str] | None = None,
    max_ca_drop: float | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Returns ``{"chosen", "overrides", "why", "val_rows", "summaries", "heldout", "run_id"}``."""
    from prefect.artifacts import create_markdown_artifact

    from detoxops.defenses.selection import pareto_frontier, select_setting, summarise_settings
    from tasks.records import log_sweep
    from tasks.sweep_tasks import grid_points, point_label
    from tasks.tracking import setup_tracking

    params = load_params(project_path(params_path), list(overrides or []))
    setup_tracking(params.tracking)
    grid = normalise_grid(grid or params.sweep.grid)
    points = grid_points(grid)
    attacks = list(attacks or params.sweep.attacks or params.benchmark.attacks)
    max_ca_drop = params.sweep.max_ca_drop if max_ca_drop is None else max_ca_drop
    started = time.perf_counter()

    prep = prepare_attacks(params, attacks)
    settings = {BASELINE: None, **{point_label(p): p for p in points}}
    score = _scorer(prep, params, max_images)
    val_rows = score(settings, attacks, "val")
    summaries = summarise_settings(val_rows, baseline=BASELINE)
    chosen, why = select_setting(val_rows, max_ca_drop=max_ca_drop, baseline=BASELINE)
    chosen_point = settings[chosen["setting"]]
    front = {s["setting"] for s in pareto_frontier([s for s in summaries if s["setting"] != BASELINE])}
    heldout = score({label: settings[label] for label in (BASELINE, chosen["setting"])}, attacks, "test")
    held_summary = {s["setting"]: s for s in summarise_settings(heldout, baseline=BASELINE)}[chosen["setting"]]
    seconds = time.perf_counter() - started

    chosen_overrides = [f"sampdetox.{k}={v}" for k, v in chosen_point.items()]
    markdown = _markdown(summaries, chosen, why, front, held_summary, heldout, attacks, max_ca_drop)
    out_dir = project_path(params.tracking.runs_dir) / "sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"chosen": chosen_point, "setting": chosen["setting"], "overrides": chosen_overrides, "why": why,
              "rule": f"lowest mean ASR subject to mean CA drop <= {max_ca_drop} points vs no defense (val split)",
              "grid": grid, "attacks": attacks, "summaries": summaries, "heldout": held_summary,
              "heldout_rows": heldout, "val_rows": val_rows}
    (out_dir / "sweep_result.json").write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "sweep.md").write_text(markdown + "\n")

    run_id = log_sweep(params, result, settings, front, prep["ingested"], out_dir, max_ca_drop, seconds, BASELINE)
    create_markdown_artifact(markdown=markdown, key="sampdetox-sweep", description="SampDetox sweep and choice")
    print("\n" + markdown + f"\n\n{seconds:.0f} s; MLflow run {run_id}")
    print("apply with: " + " ".join(f"--set {o}" for o in chosen_overrides))
    return {**result, "run_id": run_id}


def _scorer(prep: dict[str, Any], params, max_images: int | None):
    """``score({label: point | None}, attacks, split) -> rows``: every setting on every attack, submitted to the
    flow's task runner together (``None`` = the no-defense baseline)."""
    from tasks.sweep_tasks import evaluate_point

    base_cfg = params.sampdetox.model_dump(mode="json")

    def score(settings: dict[str, dict | None], attacks: list[str], split: str) -> list[dict[str, Any]]:
        futures = {}
        for label, point in settings.items():
            for name in attacks:
                a = prep["attacks"][name]
                futures[label, name] = evaluate_point.submit(
                    a["poisoned"]["path"], a["victim"]["path"], prep["purifier"]["path"], a["attack_cfg"],
                    base_cfg if point is None else {**base_cfg, **point}, BASELINE if point is None else "sampdetox",
                    split, params.data.val_fraction, params.data.seed, max_images)
        return [{**f.result(), "setting": label} for (label, _name), f in futures.items()]

    return score


def _markdown(summaries, chosen, why, front, held, heldout, attacks, max_ca_drop) -> str:
    lines = [f"# SampDetox sweep ({len(attacks)} attacks: {', '.join(attacks)})", "",
             f"Rule: lowest mean ASR subject to mean CA drop <= {max_ca_drop} points vs no defense, on the "
             "validation split.", "", f"**Chosen: `{chosen['setting']}`** — {why}.", "",
             "| setting | mean ASR | max ASR | mean PA | mean CA drop | Pareto |", "|---|---:|---:|---:|---:|:-:|"]
    for s in summaries:
        mark = "**" if s["setting"] == chosen["setting"] else ""
        lines.append(f"| {mark}{s['setting']}{mark} | {s['mean_asr']:.1f} | {s['max_asr']:.1f} | {s['mean_pa']:.1f} "
                     f"| {s['mean_ca_drop']:.1f} | {'x' if s['setting'] in front else ''} |")
    lines += ["", "Held-out test split:", "", "| attack | setting | CA | PA | ASR |", "|---|---|---:|---:|---:|"]
    for r in sorted(heldout, key=lambda r: (r["attack"], r["setting"] != BASELINE)):
        lines.append(f"| {r['attack']} | {r['setting']} | {r['ca']:.1f} | {r['pa']:.1f} | {r['asr']:.1f} |")
    lines += ["", f"Chosen point on held-out: mean ASR {held['mean_asr']:.1f}, mean PA {held['mean_pa']:.1f}, "
              f"mean CA drop {held['mean_ca_drop']:.1f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import yaml

    from flows.runners import RUNNERS, make_task_runner, worker_api

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--grid", action="append", default=[], help="axis, e.g. sampdetox.t2=80,120 (repeatable)")
    ap.add_argument("--spec", help="YAML/JSON sweep spec: {grid: {...}, attacks: [...], max_ca_drop: 3}")
    ap.add_argument("--attacks", help="comma-separated (default: benchmark.attacks)")
    ap.add_argument("--max-ca-drop", type=float, default=None, help="CA-drop bound of the rule, points (default 3)")
    ap.add_argument("--max-images", type=int, default=0, help="images per split and attack (0 = all)")
    ap.add_argument("--runner", choices=RUNNERS, default="thread", help="Prefect task runner")
    ap.add_argument("--dask-workers", type=int, default=None)
    ap.add_argument("--dask-address", default=None)
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
