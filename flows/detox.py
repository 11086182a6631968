"""SampDetox evaluation under a set of attacks: CA / PA / ASR per attack × defense, recorded in MLflow.

ingest → DVC version → purifier → per attack: poison (``params.attack`` with that attack's name and options) →
train the backdoored victim → evaluate every defense on the held-out half of the clean and triggered test images
(``detoxops.defenses.evaluation.eval_inputs``) → results table.
MLflow (``detoxops/detox``): a parent run (params, dataset input, ``results/results.csv``), a nested run per
attack (kind ``attack``) and under it one per defense (kind ``defense``; metrics ``ca`` / ``pa`` / ``asr`` as
fractions, sample grids) — the rows the dashboard's *Defense results* page tabulates.

    python -m flows.detox [--attacks badnets blended ...] [--defenses none sampdetox ...] [--source SRC]
                          [--params params.yaml] [--set key=value ...] [--max-images N] [--dvc-root DIR]

Attacks / defenses default to ``params.benchmark.attacks`` / ``.defenses`` (``--set
'benchmark.attacks=[badnets,sig]'`` works too); ``none`` (no defense, the baseline) is always evaluated. Demo-sized
budgets (``params.demo.yaml`` but its ``data`` section); ``--set`` overrides them. Heavy tasks are cached per attack.

Your model on your images (docs/byo.md), the flow ``detox-byo``: nothing is trained or poisoned here.

    python -m flows.detox --clean DIR --triggered DIR --model X [--target T] [--defenses none sampdetox ...]
                          [--purifier DIR] [--max-images N] [--image-size N] [--no-resize] [--allow-unsafe-model]

``--clean`` / ``--triggered`` / ``--model`` take what ``detoxops detox eval`` takes (class-folder trees, archives,
stored sets; a detoxops classifier folder, an ONNX file, an http(s) endpoint). Defenses default to ``none
sampdetox``. MLflow (``detoxops/detox-byo``): a parent run (kind ``report``; params, the notes, ``results/results.json``
and ``.csv``, ``samples/grid.png`` of SampDetox's examples), a nested run for the triggered set (kind ``attack``,
``detoxops.attack`` = its name) and under it one per defense (kind ``defense``, with ``samples/``) — the rows the
dashboard's *Defense results* page shows beside the benchmark's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tasks import DEMO_OVERLAY, DEMO_OVERLAY_SKIP, configure_environment, project_path

configure_environment()

from prefect import flow  # noqa: E402

from detoxops.config import load_params  # noqa: E402

FLOW = "detox"
BYO_FLOW = "detox-byo"


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
    """Returns the results table: one row per attack × defense (CA / PA / ASR as fractions; printed in %)."""
    from tasks.data_tasks import dataset_identity, ingest_dataset
    from tasks.ingestion_tasks import version_best_effort
    from tasks.purifier_tasks import get_purifier
    from tasks.records import log_detox
    from tasks.report_tasks import format_table, results_table
    from tasks.tracking import setup_tracking

    params = load_params(project_path(params_path), list(overrides or []), overlay=DEMO_OVERLAY,
                         overlay_skip=DEMO_OVERLAY_SKIP)
    attacks = list(attacks or params.benchmark.attacks)
    defenses = list(defenses or params.benchmark.defenses)
    defenses = ["none", *(d for d in dict.fromkeys(defenses) if d != "none")]  # the baseline first, no repeats
    source = str(source or params.data.source)
    uri = setup_tracking(params.tracking)
    runs_root = project_path(params.tracking.runs_dir)
    started = time.perf_counter()

    ingested = ingest_dataset(source, params.data.model_dump(mode="json"), str(project_path(params.data.root)))
    dvc = version_best_effort(ingested["path"], dvc_root, params.tracking.dvc_remote)
    data_version = dataset_identity(ingested, dvc)
    purifier = get_purifier(params.diffusion.model_dump(mode="json"), ingested["path"], str(runs_root / "purifiers"))
    out = runs_root / FLOW / data_version[:16]

    per_attack = [_attack_rows(params, name, ingested, purifier, defenses, max_images, out) for name in attacks]
    table = [row for name, _, _, rows in per_attack for row in results_table(rows, None, name)]
    seconds = time.perf_counter() - started

    log_detox(FLOW, params, ingested, data_version, attacks, defenses, max_images, seconds, table, out, per_attack)

    print("\n" + format_table(table))
    print(f"\ndata version {data_version}; {len(attacks)} attack(s) x {len(defenses)} defense(s); {seconds:.0f} s")
    print(f"\nMLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    return table


def _attack_rows(params, name: str, ingested: dict[str, Any], purifier: dict[str, Any], defenses: list[str],
                 max_images: int | None, out: Path) -> tuple[str, dict[str, Any], dict[str, Any], list[dict]]:
    """One attack: poison (``params.attack`` with this name), train the victim, score every defense (cached tasks).
    Returns ``(name, poisoned, victim, rows)``."""
    from tasks.attack_tasks import poison_dataset
    from tasks.detox_tasks import evaluate_defenses_task
    from tasks.victim_tasks import train_victim

    attack_cfg = params.attack.model_copy(update={"name": name}).model_dump(mode="json")
    poisoned = poison_dataset(ingested["path"], attack_cfg, str(project_path(params.data.root)))
    victim = train_victim(poisoned["path"], params.victim.model_dump(mode="json"), attack_cfg,
                          str(project_path(params.tracking.runs_dir) / "victims"))
    rows = evaluate_defenses_task(poisoned["path"], victim["path"], purifier["path"], defenses,
                                  params.sampdetox.model_dump(mode="json"), attack_cfg, max_images, str(out / name),
                                  params.data.model_dump(mode="json"), params.diffusion.precision)
    return name, poisoned, victim, rows


@flow(name="detox-byo", log_prints=True)
def detox_byo(
    clean: str,
    triggered: str,
    model: str,
    defenses: list[str] | None = None,
    target: str | None = None,
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    max_images: int | None = None,
    purifier: str | None = None,
    image_size: int | None = None,
    resize: bool = True,
    allow_unsafe_model: bool = False,
    input_range: str = "0-1",
    http_protocol: str = "auto",
) -> list[dict[str, Any]]:
    """CA / PA / ASR of your model behind each defense on your clean and triggered images; returns the rows (fractions)
    and records them in MLflow with example grids (see the module docstring)."""
    import json

    from tasks.detox_tasks import evaluate_byo_task
    from tasks.records import log_detox_byo
    from tasks.report_tasks import format_table, results_table, write_table
    from tasks.tracking import setup_tracking

    params = load_params(project_path(params_path), list(overrides or []))
    defenses = ["none", *(d for d in dict.fromkeys(defenses or ["sampdetox"]) if d != "none")]
    uri = setup_tracking(params.tracking)
    started = time.perf_counter()
    staging = project_path(params.tracking.runs_dir) / BYO_FLOW / time.strftime("%Y%m%dT%H%M%S")
    result = evaluate_byo_task(
        _local(clean), _local(triggered), model if "://" in model else _local(model), defenses,
        params.model_dump(mode="json"), str(staging), target=target, purifier=_local(purifier) if purifier else None,
        max_images=max_images, image_size=image_size, resize=resize, allow_unsafe_model=allow_unsafe_model,
        input_range=input_range, http_protocol=http_protocol,
    )
    seconds = time.perf_counter() - started
    rows, attack = result["rows"], f"triggered:{result['triggered']['name']}"
    table = results_table(rows, None, attack)
    summary = {k: v for k, v in result.items() if k != "rows"}
    summary["rows"] = [{k: v for k, v in r.items() if k != "samples_dir"} for r in rows]
    results_json = staging / "results.json"
    results_json.write_text(json.dumps(summary, indent=2) + "\n")

    parent_id = log_detox_byo(BYO_FLOW, params, result, defenses, max_images, seconds,
                              write_table(table, staging / "results.csv"), results_json)
    prefix = params.tracking.experiment_prefix

    for note in result["notes"]:
        print(f"note: {note}")
    print(f"model {result['model']['description']}; clean {result['clean']['n']} images ({result['clean']['origin']}); "
          f"triggered {result['triggered']['n']} ({result['triggered']['origin']})")
    print("\n" + format_table(table))
    print(f"\nresults: {results_json}; MLflow run {parent_id} in {prefix}/{BYO_FLOW}; {seconds:.0f} s")
    print(f"MLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    return table


def _local(path: str) -> str:
    """A path the task can open whatever its working directory (relative paths are the caller's)."""
    return str(Path(path).expanduser().resolve())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", nargs="+", default=None, help="attack names (default: benchmark.attacks)")
    ap.add_argument("--defenses", nargs="+", default=None,
                    help="defense names (default: benchmark.defenses; with --clean: none sampdetox)")
    ap.add_argument("--source", default=None, help="dataset source (default: data.source)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--max-images", type=int, default=None,
                    help="test images per split for the evaluation (default 200; with --clean: all)")
    ap.add_argument("--dvc-root", default=None, help="DVC repository (default: the nearest .dvc/ above the data)")
    byo = ap.add_argument_group("your model and images (all three together)")
    byo.add_argument("--clean", default=None, help="clean test images: class-folder tree, archive or stored set")
    byo.add_argument("--triggered", "--poisoned", dest="triggered", default=None,
                     help="triggered test images (may lack classes; target-class images are dropped)")
    byo.add_argument("--model", "--victim", dest="model", default=None,
                     help="detoxops classifier folder, .onnx file or http(s):// endpoint")
    byo.add_argument("--target", default=None, help="target class: index or name (default: the one class the "
                     "triggered images lack)")
    byo.add_argument("--purifier", default=None, help="purifier folder (default: diffusion.purifier or shipped)")
    byo.add_argument("--image-size", type=int, default=None, help="evaluate at this size (default: the model's)")
    byo.add_argument("--no-resize", dest="resize", action="store_false", help="refuse images of another size")
    byo.add_argument("--allow-unsafe-model", action="store_true",
                     help="allow TorchScript / pickled models (they run code when loaded)")
    byo.add_argument("--input-range", default="0-1", choices=["0-1", "0-255"])
    byo.add_argument("--http-protocol", default="auto", choices=["auto", "mlflow", "guard"])
    args = ap.parse_args(argv)
    given = [n for n in ("clean", "triggered", "model") if getattr(args, n)]
    if given:
        if len(given) != 3:
            ap.error("--clean, --triggered and --model go together (missing: "
                     f"{', '.join('--' + n for n in ('clean', 'triggered', 'model') if n not in given)})")
        if args.attacks or args.source:
            ap.error("--attacks / --source poison and train here; with --clean / --triggered / --model nothing is")
        try:
            detox_byo(args.clean, args.triggered, args.model, args.defenses, args.target, args.params,
                      args.overrides, args.max_images, args.purifier, args.image_size, args.resize,
                      args.allow_unsafe_model, args.input_range, args.http_protocol)
        except (ValueError, FileNotFoundError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    max_images = 200 if args.max_images is None else args.max_images
    detox(args.attacks, args.defenses, args.source, args.params, args.overrides, max_images, args.dvc_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
