"""What each flow records in MLflow, given the results its tasks returned: flows compose tasks and call one of these;
they never call ``mlflow`` themselves (tests/test_layering.py checks it).

Rates arrive as the tasks return them, fractions (``detoxops.metrics``), and are logged as they are (MLflow's unit
is the fraction, docs/ARCHITECTURE.md; the dashboard shows percent); :func:`finite` only drops None / NaN, which
MLflow cannot take. The tables logged as artifacts (``results.csv``) are the displayed ones, in percent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow

from tasks import PROJECT_ROOT
from tasks.tracking import log_dataset, register_model, run

__all__ = ["finite", "run_params", "model_tag", "log_demo", "log_sanitize_flow", "log_sweep", "log_detox", "log_detox_byo",
           "log_benchmark"]


def finite(rates: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of ``rates`` as floats (MLflow refuses None; NaN says nothing)."""
    return {k: float(v) for k, v in rates.items() if isinstance(v, int | float) and math.isfinite(v)}


def model_tag(params, ingested: dict[str, Any] | None = None) -> str:
    """The victim architecture a run trains: ``victim.arch``, with ``auto`` resolved for the ingested data's image
    size (what the dashboard groups runs by)."""
    info = (ingested or {}).get("info") or {}
    shape, count = info.get("image_shape"), ((info.get("splits") or {}).get("train") or {}).get("count")
    return params.victim.for_image_size(int(shape[0]), count).arch if shape else params.victim.arch


def run_params(params, ingested: dict[str, Any] | None, sanitized: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params`` as a flow's MLflow params, ``victim.arch`` as the run trains it (``auto`` resolved for the ingested
    data, as :func:`model_tag`) and, for a sanitize run, the DataElixir settings that ran."""
    from tasks.ingestion_tasks import params_as_run

    return params_as_run(params, sanitized, {"arch": model_tag(params, ingested)})


def log_sanitize_flow(flow: str, params, ingested: dict[str, Any], data_version: str, attack: str | None,
                      table_csv: Path, seconds: float, before: dict[str, Any], after: dict[str, Any],
                      sanitized: dict[str, Any], purified_dvc: dict[str, Any] | None, clean_model: dict[str, Any],
                      staging: Path, model_name: str) -> dict[str, str]:
    """``flows.sanitize``: parent run (results table, dataset input), child ``victim`` (CA / PA / ASR before),
    child ``dataelixir`` (TPR / FPR, retrained model's ACC / PA / ASR, decisions, anomaly index, the clean model
    registered as ``model_name``). Returns ``{"run_id", "model_version"}`` of the ``dataelixir`` run."""
    from tasks.ingestion_tasks import log_dataelixir_artifacts

    target = sanitized.get("target_label")
    tags = {"detoxops.dataset": ingested["name"], "detoxops.data_version": data_version, "detoxops.attack": attack,
            "detoxops.seed": params.attack.seed, "detoxops.model": model_tag(params, ingested)}
    prefix = params.tracking.experiment_prefix
    with run(flow, f"sanitize {ingested['name']} {attack or 'no attack'}", kind="report", prefix=prefix,
             tags=tags, params=run_params(params, ingested, sanitized)) as parent:
        log_dataset(ingested["path"], ingested["name"], data_version, "training")
        mlflow.log_metric("seconds", seconds)
        mlflow.log_artifact(str(table_csv), "results")
        with run(flow, "victim", kind="victim", prefix=prefix, parent_run_id=parent.info.run_id, tags=tags):
            mlflow.log_metrics(finite({k: before.get(k) for k in ("ca", "pa", "asr")}))
        sanitize_tags = {
            **tags, "detoxops.defense": "dataelixir",
            "detoxops.target_label": target, "detoxops.status": "quarantined" if target is not None else "passed",
            "detoxops.purified_version": sanitized["path"],
            "detoxops.purified_data_version": (purified_dvc or {}).get("md5") or Path(sanitized["path"]).name,
        }
        with run(flow, "dataelixir", kind="sanitize", prefix=prefix, parent_run_id=parent.info.run_id,
                 tags=sanitize_tags) as r:
            metrics = finite({"tpr": sanitized.get("tpr"), "fpr": sanitized.get("fpr"), "acc": after["ca"],
                                 "pa": after.get("pa"), "asr": after.get("asr")})
            metrics["n_flagged"] = float(sanitized.get("n_flagged") or 0)
            mlflow.log_metrics(metrics)
            log_dataelixir_artifacts(sanitized, params.dataelixir.anomaly_threshold, staging)
            mlflow.log_artifacts(clean_model["path"], "clean_model")
            model_tags = {"arch": clean_model.get("arch"), "trained_on": sanitized["path"], "target_label": target,
                          "data_version": sanitize_tags["detoxops.purified_data_version"]}
            version = register_model(f"runs:/{r.info.run_id}/clean_model", model_name,
                                     tags={k: v for k, v in model_tags.items() if v is not None})
            return {"run_id": r.info.run_id, "model_version": version}


def log_sweep(params, outcome, ingested: dict[str, Any], seconds: float, baseline: str = "none") -> str:
    """``flows.sweep`` (a :class:`detoxops.operations.sweep.SweepOutcome`, rates in fractions, logged as they are):
    parent run (grid, rule, choice, held-out metrics, ``results/sweep.md`` / ``.json``), one child per setting on
    ``val`` (mean and per-attack CA / PA / ASR, CA drop) and one ``heldout`` child for the chosen setting. Returns the
    parent run id."""
    attacks, chosen, settings = outcome.attacks, outcome.setting, outcome.settings
    val_rows, heldout, held = outcome.val_rows, outcome.heldout_rows, outcome.heldout
    front = set(outcome.choice.frontier)
    prefix = params.tracking.experiment_prefix
    tags = {"detoxops.dataset": ingested["name"], "detoxops.data_version": ingested["hash"],
            "detoxops.model": model_tag(params, ingested), "detoxops.attacks": ",".join(attacks)}
    by_setting = {s["setting"]: s for s in outcome.choice.summaries}
    n_points = len([label for label in settings if label != baseline])
    with run("sweep", f"sweep {n_points} points x {len(attacks)} attacks", kind="sweep", prefix=prefix,
             tags={**tags, "detoxops.chosen": chosen}, params=run_params(params, ingested)) as parent:
        log_dataset(ingested["path"], ingested["name"], ingested["hash"], "validation")
        mlflow.log_params({"sweep.grid": json.dumps(outcome.grid), "sweep.max_ca_drop": str(outcome.max_ca_drop),
                           "sweep.chosen": chosen, "sweep.rule": outcome.rule[:250]})
        for label in settings:
            rows = [r for r in val_rows if r["setting"] == label]
            s = by_setting[label]
            with run("sweep", label, kind="sweep-point", prefix=prefix, parent_run_id=parent.info.run_id,
                     tags={**tags, "detoxops.split": "val", "detoxops.defense": baseline if label == baseline
                           else "sampdetox", "detoxops.chosen": str(label == chosen).lower(),
                           "detoxops.pareto": str(label in front).lower()}):
                point = settings[label] or {}
                mlflow.log_params({f"sampdetox.{k}": str(v) for k, v in point.items()} or {"sampdetox": "none"})
                metrics = finite({"ca": _mean(rows, "ca"), "pa": s["mean_pa"], "asr": s["mean_asr"],
                                  "ca_drop": s["mean_ca_drop"], "max_asr": s["max_asr"]})
                for r in rows:
                    metrics.update({f"{r['attack']}.{m}": v for m, v in finite(
                        {m: r[m] for m in ("ca", "pa", "asr")}).items()})
                mlflow.log_metrics(metrics)
        with run("sweep", f"heldout {chosen}", kind="sweep-heldout", prefix=prefix,
                 parent_run_id=parent.info.run_id, tags={**tags, "detoxops.split": "test"}):
            mlflow.log_params({f"sampdetox.{k}": str(v) for k, v in outcome.chosen.items()})
            hrows = [r for r in heldout if r["setting"] == chosen]
            mlflow.log_metrics(finite({"ca": _mean(hrows, "ca"), "pa": held["mean_pa"], "asr": held["mean_asr"],
                                       "ca_drop": held["mean_ca_drop"]}))
        mlflow.log_metrics({**{f"heldout.{k}": v for k, v in finite(
            {"asr": held["mean_asr"], "pa": held["mean_pa"], "ca_drop": held["mean_ca_drop"]}).items()},
            "seconds": seconds})
        for path in (outcome.markdown_md, outcome.result_json):
            if path is not None:
                mlflow.log_artifact(str(path), "results")
        return parent.info.run_id


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows) if rows else float("nan")


def log_detox(flow: str, params, ingested: dict[str, Any], data_version: str, attacks: list[str],
              defenses: list[str], max_images: int | None, seconds: float, table: list[dict[str, Any]],
              out: Path, per_attack: list[tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]]) -> str:
    """``flows.detox``: parent run (params, dataset input, ``results/results.csv``), a child per attack and under it
    one per defense (:func:`tasks.detox_tasks.log_defense_rows`). Returns the parent run id."""
    from tasks.detox_tasks import log_defense_rows
    from tasks.report_tasks import write_table

    tags = {"detoxops.dataset": ingested["name"], "detoxops.data_version": data_version,
            "detoxops.seed": params.attack.seed, "detoxops.model": model_tag(params, ingested)}
    prefix = params.tracking.experiment_prefix
    with run(flow, f"detox {'+'.join(attacks)}", kind="report", prefix=prefix, tags=tags,
             params=run_params(params, ingested)) as parent:
        log_dataset(ingested["path"], ingested["name"], data_version, "evaluation")
        mlflow.log_params({"detox.attacks": ",".join(attacks), "detox.defenses": ",".join(defenses),
                           "detox.max_images": str(max_images)})
        mlflow.log_metric("seconds", seconds)
        # per run (its MLflow id): two concurrent runs on the same data never overwrite each other's table
        mlflow.log_artifact(str(write_table(table, out / parent.info.run_id / "results.csv")), "results")
        for name, poisoned, victim, rows in per_attack:
            attack_tags = {**tags, "detoxops.attack": name, "detoxops.poisoned_version": poisoned["hash"][:12]}
            with run(flow, f"attack={name}", kind="attack", prefix=prefix, parent_run_id=parent.info.run_id,
                     tags=attack_tags) as attack_run:
                mlflow.log_metrics({"n_poisoned": poisoned["n_poisoned"], "n_train": poisoned["n_train"],
                                    "victim_seconds": float(victim.get("seconds") or 0.0)})
                log_defense_rows(rows, flow, attack_run.info.run_id, attack_tags, prefix)
        return parent.info.run_id


def log_detox_byo(flow: str, params, result: dict[str, Any], defenses: list[str], max_images: int | None,
                  seconds: float, table_csv: Path, results_json: Path) -> str:
    """``flows.detox.detox_byo``: parent run (params, notes, ``results/results.json`` / ``.csv``, SampDetox's
    ``samples/grid.png``), a child for the triggered set and under it one per defense. Returns the parent run id."""
    from tasks.detox_tasks import log_defense_rows

    rows, attack = result["rows"], f"triggered:{result['triggered']['name']}"
    tags = {"detoxops.dataset": result["clean"]["name"], "detoxops.data_version": result["data_version"],
            "detoxops.seed": params.sampdetox.seed, "detoxops.target_label": result["target"],
            **{f"detoxops.{k}": v for k, v in result["model"]["tags"].items()}}
    prefix = params.tracking.experiment_prefix
    with run(flow, f"byo {result['model']['name']}", kind="report", prefix=prefix, tags=tags,
             params={"sampdetox": params.sampdetox.resolved()}) as parent:
        mlflow.log_params({
            "byo.clean": result["clean"]["origin"], "byo.triggered": result["triggered"]["origin"],
            "byo.model": result["model"]["source"], "byo.model_kind": result["model"]["kind"],
            "byo.model_digest": str(result["model"]["digest"]), "byo.target": f"{result['target']} "
            f"({result['target_name']})", "byo.image_size": "x".join(map(str, result["image_size"])),
            "byo.purifier": result["purifier"], "byo.max_images": str(max_images),
            "detox.defenses": ",".join(defenses),
        })
        mlflow.log_metrics({"seconds": seconds, "n_clean": result["clean"]["n"],
                            "n_triggered": result["triggered"]["n"],
                            "dropped_target_images": result["dropped_target_images"]})
        mlflow.log_text("\n".join(result["notes"]) + "\n", "results/notes.txt")
        mlflow.log_artifact(str(results_json), "results")
        mlflow.log_artifact(str(table_csv), "results")
        shown = next((r for r in rows if r["defense"] != "none"), rows[0])
        mlflow.log_artifact(str(Path(shown["samples_dir"]) / "grid.png"), "samples")
        with run(flow, f"attack={attack}", kind="attack", prefix=prefix, parent_run_id=parent.info.run_id,
                 tags={**tags, "detoxops.attack": attack}) as attack_run:
            log_defense_rows(rows, flow, attack_run.info.run_id, {**tags, "detoxops.attack": attack}, prefix)
        return parent.info.run_id


def log_benchmark(params, rows: list[dict[str, Any]], attacks: list[str], defenses: list[str],
                  max_images: int | None, seconds: float, ingested: dict[str, Any], purifier_origin: str,
                  out_dir: Path) -> str:
    """``flows.benchmark``: parent run (the matrix as ``results/benchmark.md`` / ``.csv`` and a logged table), one
    child per attack × defense (CA / PA / ASR, throughput, samples). Returns the parent run id."""
    prefix = params.tracking.experiment_prefix
    tags = {"detoxops.dataset": ingested["name"], "detoxops.data_version": ingested["hash"],
            "detoxops.model": model_tag(params, ingested), "detoxops.purifier": purifier_origin}
    with run("benchmark", f"benchmark {len(attacks)}x{len(defenses)}", kind="benchmark", prefix=prefix, tags=tags,
             params=run_params(params, ingested)) as parent:
        log_dataset(ingested["path"], ingested["name"], ingested["hash"], "evaluation")
        mlflow.log_params({"benchmark.attacks_run": ",".join(attacks), "benchmark.defenses_run": ",".join(defenses),
                           "benchmark.max_images": str(max_images)})
        mlflow.log_metric("seconds", seconds)
        mlflow.log_artifact(str(out_dir / "benchmark.md"), "results")
        mlflow.log_artifact(str(out_dir / "benchmark.csv"), "results")
        mlflow.log_table({c: [r.get(c) for r in rows] for c in ("attack", "defense", "ca", "pa", "asr")},
                         "results/benchmark_table.json")
        for r in rows:
            with run("benchmark", f"{r['attack']} x {r['defense']}", kind="defense", prefix=prefix,
                     parent_run_id=parent.info.run_id,
                     tags={**tags, "detoxops.attack": r["attack"], "detoxops.defense": r["defense"]}):
                mlflow.log_metrics(finite({m: r.get(m) for m in ("ca", "pa", "asr")}))
                for key in ("images_per_s", "seconds", "map_auc"):
                    if isinstance(r.get(key), float) and r[key] == r[key]:
                        mlflow.log_metric(key, r[key])
                if r.get("samples_dir") and Path(r["samples_dir"]).is_dir():
                    mlflow.log_artifacts(r["samples_dir"], "samples")
        return parent.info.run_id


def log_demo(params, done: dict[str, Any], table: list[dict[str, Any]], summaries: list[str], seconds: float,
             check_seconds: float, runs_root: Path, torch_threads: int) -> dict[str, Any]:
    """``flows.demo``: parent run (params, dataset input, ``results/results.csv`` and the closing lines as
    ``results/summary.txt``, SampDetox figure 2's rows, the purifier registered as ``detoxops-purifier``), one child
    per defense, a ``dataelixir`` child (TPR / FPR, the retrained model's ACC / ASR, decisions, the victim registered
    as ``detoxops-victim``) and the ingestion check of the poisoned training set (``detoxops.kind=ingestion``).

    ``done``: the demo's task results by stage (``ingested``, ``data_version``, ``poisoned``, ``victim``,
    ``visibility``, ``purifier`` (SampDetox's), ``elixir_purifier`` (DataElixir's, named in the check record),
    ``sanitized``, ``retrained``, ``defense_rows``). Returns the check record."""
    from tasks.detox_tasks import log_defense_rows
    from tasks.report_tasks import write_table
    from tasks.visibility_tasks import log_visibility_rows

    ingested, sanitized = done["ingested"], done["sanitized"]
    prefix = params.tracking.experiment_prefix
    tags = {"detoxops.dataset": ingested["name"], "detoxops.data_version": done["data_version"],
            "detoxops.attack": params.attack.name, "detoxops.seed": params.attack.seed,
            "detoxops.model": model_tag(params, ingested), "detoxops.torch_threads": torch_threads}
    with run("demo", f"demo {params.attack.name}", kind="report", prefix=prefix, tags=tags,
             params=run_params(params, ingested)) as parent:
        parent_id = parent.info.run_id
        log_dataset(ingested["path"], ingested["name"], done["data_version"], "training")
        mlflow.log_metric("seconds", seconds)
        mlflow.log_artifact(str(write_table(table, runs_root / "demo" / "results.csv")), "results")
        mlflow.log_text("\n".join(summaries) + "\n", "results/summary.txt")  # the closing lines, as printed
        log_visibility_rows(done["visibility"])  # robustness/visibility_robustness.csv: the dashboard's figure 2
        log_defense_rows(done["defense_rows"], "demo", parent_id, tags, prefix)
        _log_demo_sanitize(sanitized, done["retrained"], parent_id, tags, prefix, done["victim"])
        mlflow.log_artifacts(done["purifier"]["path"], "purifier")  # with detoxops-victim: the dashboard's Try it
        register_model(f"runs:/{parent_id}/purifier", "detoxops-purifier",
                       tags={"origin": done["purifier"].get("origin", "")})
        return _record_demo_check(params, done, check_seconds, runs_root, parent_id)


def _log_demo_sanitize(sanitized: dict[str, Any], retrained: dict[str, Any], parent_id: str, tags: dict, prefix: str,
                       victim: dict[str, Any]) -> None:
    """The demo's ``dataelixir`` child: TPR / FPR, the retrained model's ACC / ASR, decisions, the victim."""
    target = sanitized.get("target_label")
    with run("demo", "dataelixir", kind="sanitize", prefix=prefix, parent_run_id=parent_id,
             tags={**tags, "detoxops.defense": "dataelixir", "detoxops.target_label": target,
                   "detoxops.status": "quarantined" if target is not None else "passed"}) as r:
        rates = {k: sanitized.get(k) for k in ("tpr", "fpr") if isinstance(sanitized.get(k), float)}
        mlflow.log_metrics(finite({**rates, "acc": retrained["ca"], "asr": retrained["asr"]}))
        if Path(sanitized["decisions"]).is_file():
            mlflow.log_artifact(sanitized["decisions"], "decisions")
        mlflow.log_artifacts(victim["path"], "victim")
        register_model(f"runs:/{r.info.run_id}/victim", "detoxops-victim", tags={"arch": victim.get("arch")})


def _record_demo_check(params, done: dict[str, Any], seconds: float, runs_root: Path,
                       parent_id: str) -> dict[str, Any]:
    """The ingestion check of the poisoned training set, from the DataElixir result the demo already computed
    (no second scan): the record ``flows.ingestion_check`` writes (nested ``detoxops.kind=ingestion`` run, marker
    next to the poisoned version, Prefect artifacts), but the demo reports rather than failing on a target."""
    from tasks.data_tasks import dataset_identity
    from tasks.ingestion_tasks import check_targets, record_ingestion_check, version_best_effort

    poisoned, sanitized = done["poisoned"], done["sanitized"]
    remote = params.tracking.dvc_remote
    dataset = {"path": poisoned["path"], "hash": poisoned["hash"], "name": Path(poisoned["path"]).parent.name,
               "info": done["ingested"].get("info") or {}}
    dvc = version_best_effort(poisoned["path"], str(PROJECT_ROOT), remote)
    purified_dvc = (version_best_effort(sanitized["path"], str(PROJECT_ROOT), remote)
                    if check_targets(sanitized) else None)
    return record_ingestion_check(
        flow="demo", params=params, source=f"{params.data.source} + {params.attack.name} (flows.demo)",
        resolved_source=poisoned["path"], dataset=dataset, dvc=dvc, data_version=dataset_identity(dataset, dvc),
        sanitized=sanitized, victim=done["victim"], purifier=done.get("elixir_purifier", done["purifier"]),
        purified_dvc=purified_dvc,
        seconds=seconds, runs_root=runs_root, parent_run_id=parent_id,
    )
