"""The README's main job: the whole story on the embedded offline default (digits), in one Prefect flow.

ingest → DVC version → poison (params.attack) → train the victim → trigger visibility / robustness (SampDetox
figure 2, on at most ``max_images`` triggered test images) → purifier (shipped, or trained) → DataElixir
(training-time: target label, TPR / FPR, a clean model retrained on the purified set; recorded as an
ingestion check of the poisoned set, as ``flows.ingestion_check`` records one, without failing the run) →
SampDetox evaluation (inference-time: CA / PA / ASR per defense, on the held-out half of the test split) → results table, all recorded in MLflow (``detoxops/demo``), with the
victim and the purifier registered (``detoxops-victim``, ``detoxops-purifier``) for the dashboard's *Try it*.

    python -m flows.demo [--params params.yaml] [--overlay params.demo.yaml] [--set key=value ...] [--max-images N]
                         [--threads N]

Demo-sized settings (the overlay ``params.demo.yaml`` on ``params.yaml``, chosen by measurement: see
docs/platform.md) keep it within minutes on a 2-core CPU; ``--set`` overrides them. It ends with one line per
defense saying what it showed, and where on the dashboard to see it.
Heavy tasks are cached on inputs + code version: a second run re-uses finished stages.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

from tasks import DEMO_OVERLAY, PROJECT_ROOT, configure_environment, project_path

configure_environment()

from prefect import flow  # noqa: E402

from detoxops.config import load_params  # noqa: E402

DEFENSES = ["none", "sampdetox", "faithful"]
# Torch threads for every stage of the demo. One, because on a 2-core machine that runs anything else torch's default
# of two threads spin-waits against it: the demo's victim took 229 s wall / 99 CPU s at two threads and 47 s / 19.5
# CPU s at one (load ~6; docs/platform.md "Choosing the demo's settings"). --threads 0 keeps torch's default.
DEMO_THREADS = 1
# where the closing lines point: `streamlit run dashboards/app.py`, pages by their file name (dashboards/pages/)
DASHBOARD_URL = "http://localhost:8501"


@flow(name="demo", log_prints=True)
def demo(params_path: str = "params.yaml", overrides: list[str] | None = None, max_images: int = 200,
         overlay: str | None = str(DEMO_OVERLAY), threads: int | None = DEMO_THREADS) -> list[dict]:
    """``threads``: torch threads for every stage (None / 0 = torch's default); restored when the flow ends."""
    import torch

    previous = torch.get_num_threads()
    if threads:  # process-wide: the tasks run in this process's threads (Prefect's default task runner)
        torch.set_num_threads(int(threads))
    try:
        return _demo(params_path, overrides, max_images, overlay)
    finally:
        torch.set_num_threads(previous)


def _demo(params_path: str, overrides: list[str] | None, max_images: int, overlay: str | None) -> list[dict]:
    import torch

    from tasks.records import log_demo
    from tasks.report_tasks import results_table
    from tasks.tracking import setup_tracking

    no_overlay = overlay is None or str(overlay).lower() in ("", "none")
    params = load_params(project_path(params_path), list(overrides or []),
                         overlay=None if no_overlay else project_path(overlay))
    uri = setup_tracking(params.tracking)
    runs_root = project_path(params.tracking.runs_dir)
    started = time.perf_counter()
    done = _run_stages(params, max_images, runs_root, started)
    retrained, sanitized = done["retrained"], done["sanitized"]
    sanitize_row = {"defense": "dataelixir (retrained)", "ca": retrained["ca"], "pa": retrained["pa"],
                    "asr": retrained["asr"], "tpr": sanitized.get("tpr"), "fpr": sanitized.get("fpr")}
    table = results_table(done["defense_rows"], sanitize_row, params.attack.name)
    summaries = defense_summaries(table, sanitized, decision_counts(sanitized.get("decisions")))
    seconds = time.perf_counter() - started
    check = log_demo(params, done, table, summaries, seconds, done["check_seconds"], runs_root,
                     torch.get_num_threads())
    _print_closing(params, table, summaries, done, check, seconds, uri)
    return table


def _run_stages(params: Any, max_images: int, runs_root: Path, started: float) -> dict[str, Any]:
    """The demo's tasks, in order; their results by stage (``check_seconds``: until DataElixir finished)."""
    from tasks.attack_tasks import poison_dataset
    from tasks.data_tasks import dataset_identity, ingest_dataset, version_dataset
    from tasks.detox_tasks import evaluate_defenses_task
    from tasks.purifier_tasks import get_purifier
    from tasks.sanitize_tasks import sanitize_dataset
    from tasks.victim_tasks import train_victim
    from tasks.visibility_tasks import visibility_rows_task

    data_root = str(project_path(params.data.root))
    attack_cfg = params.attack.model_dump(mode="json")
    victim_cfg, sampdetox_cfg = params.victim.model_dump(mode="json"), params.sampdetox.model_dump(mode="json")
    data_cfg = params.data.model_dump(mode="json")
    done: dict[str, Any] = {"ingested": ingest_dataset(params.data.source, data_cfg, data_root)}
    ingested = done["ingested"]
    try:
        done["dvc"] = version_dataset(ingested["path"], str(PROJECT_ROOT), params.tracking.dvc_remote)
    except Exception as exc:  # versioning is best effort for the demo; the content hash still identifies the data
        print(f"DVC versioning skipped: {exc}")
        done["dvc"] = None
    done["data_version"] = dataset_identity(ingested, done["dvc"])
    poisoned = done["poisoned"] = poison_dataset(ingested["path"], attack_cfg, data_root)
    victim = done["victim"] = train_victim(poisoned["path"], victim_cfg, attack_cfg, str(runs_root / "victims"))
    done["visibility"] = visibility_rows_task(poisoned["path"], victim["path"], attack_cfg, max_images,
                                              int(params.attack.seed))
    purifier = done["purifier"] = get_purifier(params.diffusion.model_dump(mode="json"), ingested["path"],
                                               str(runs_root / "purifiers"))
    # DataElixir's own (its profile may name another shipped purifier: cpu_cifar10 runs cifar10-32-v2)
    elixir_purifier = done["elixir_purifier"] = get_purifier(
        params.diffusion.model_dump(mode="json"), ingested["path"], str(runs_root / "purifiers"),
        params.dataelixir.model_dump(mode="json"))
    sanitized = done["sanitized"] = sanitize_dataset(poisoned["path"], victim["path"], elixir_purifier["path"],
                                                     params.dataelixir.model_dump(mode="json"), data_root,
                                                     precision=params.diffusion.precision)
    done["check_seconds"] = time.perf_counter() - started
    clean_model = train_victim(sanitized["path"], victim_cfg, None, str(runs_root / "victims"))
    done["defense_rows"] = evaluate_defenses_task(poisoned["path"], victim["path"], purifier["path"], DEFENSES,
                                                  sampdetox_cfg, attack_cfg, max_images,
                                                  str(runs_root / "demo" / "samples"), data_cfg,
                                                  params.diffusion.precision)
    done["retrained"] = evaluate_defenses_task(poisoned["path"], clean_model["path"], purifier["path"], ["none"],
                                               sampdetox_cfg, attack_cfg, None, str(runs_root / "demo" / "retrained"),
                                               data_cfg, params.diffusion.precision)[0]
    return done


def _print_closing(params: Any, table: list[dict], summaries: list[str], done: dict[str, Any],
                   check: dict[str, Any], seconds: float, uri: str) -> None:
    """The results table, one line per defense, and where MLflow, Prefect, DVC and the dashboard show the run."""
    from tasks.report_tasks import format_table

    print("\n" + format_table(table))
    print("\n" + "\n".join(summaries))
    vis = done["visibility"]["summary"]
    print(f"\ntrigger visibility v {vis['v_mean']:.4f} (mean of {vis['n']}); robustness η_r {vis['eta_r_mean']:.3f} "
          f"(mean of the {vis['hits']} images the victim sends to the target, {vis['n_inf']} never flipped)")
    found_targets = ", ".join(map(str, check["target_labels"])) or "none"
    print(f"\ndata version {done['data_version']}; target label(s) detected: {found_targets}; {seconds:.0f} s")
    targets = ",".join(map(str, check["target_labels"]))
    print(f"ingestion check: {check['status']}" + (f", target label {targets}" if targets else ""))
    if done["dvc"]:
        data_dir = Path(done["dvc"]["dvc_file"]).parent.parent
        data_dir = data_dir.relative_to(PROJECT_ROOT) if PROJECT_ROOT in data_dir.parents else data_dir
        print(f"DVC:       dataset versions tracked by {data_dir}/*/*.dvc, pushed to {params.tracking.dvc_remote}; "
              f"`git add {data_dir}` records them, `.venv/bin/dvc status -R {data_dir}` checks them")
    print(f"\nMLflow:    .venv/bin/mlflow ui --backend-store-uri {uri}")
    print("Prefect:   .venv/bin/prefect server start   (then http://127.0.0.1:4200)")
    print("Dashboard: .venv/bin/streamlit run dashboards/app.py")


def decision_counts(decisions_csv: str | Path | None) -> dict[str, int] | None:
    """Poisoned / found / clean / wrongly flagged training samples from DataElixir's per-sample decisions
    (columns ``flagged`` and ``poisoned_true``); None when the file or those columns are missing."""
    if not decisions_csv or not Path(decisions_csv).is_file():
        return None
    with Path(decisions_csv).open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"flagged", "poisoned_true"} <= set(reader.fieldnames or ()):
            return None
        pairs = [(row["flagged"] == "1", row["poisoned_true"] == "1") for row in reader]
    return {"poisoned": sum(p for _, p in pairs), "found": sum(f and p for f, p in pairs),
            "clean": sum(not p for _, p in pairs), "false": sum(f and not p for f, p in pairs)}


def _change(what: str, before: float, after: float) -> str:
    if round(after, 1) == round(before, 1):
        return f"{what} stayed at {after:.1f}"
    return f"{what} {'fell' if after < before else 'rose'} from {before:.1f} to {after:.1f}"


def defense_summaries(table: list[dict[str, Any]], sanitized: dict[str, Any],
                      counts: dict[str, int] | None) -> list[str]:
    """One line per defense saying what the run showed, in the numbers of the results table as it is shown
    (percent; the rows hold fractions), then where on the dashboard the same runs are shown."""
    from detoxops.metrics import percent_rates

    table = [percent_rates(r) for r in table]
    rows = {r["defense"]: r for r in table}
    none = rows["none"]
    lines = []
    for name, label in (("sampdetox", "SampDetox (default profile)"), ("faithful", "SampDetox (paper's Algorithm 1)")):
        if name in rows:
            asr = _change("the victim's ASR on purified triggered inputs", none["asr"], rows[name]["asr"])
            ca = _change("clean accuracy", none["ca"], rows[name]["ca"])
            lines.append(f"{label}: {asr}; {ca}.")
    elixir = next((r for r in table if str(r["defense"]).startswith("dataelixir")), None)
    if elixir is not None:
        from tasks.ingestion_tasks import check_targets

        targets = check_targets(sanitized)  # every label DataElixir took for a target, not only the first
        target = ("target " if len(targets) == 1 else "targets ") + ", ".join(map(str, targets))
        if not targets:
            found = "found no backdoor target label (the training set is kept as is)"
        elif counts is not None and counts["poisoned"]:
            found = (f"found {counts['found']} / {counts['poisoned']} poisoned training samples "
                     f"(TPR {elixir['tpr']:.1f}), flagged {counts['false']} / {counts['clean']} clean ones "
                     f"(FPR {elixir['fpr']:.1f}), {target}")
        else:
            tpr = elixir.get("tpr")
            known = isinstance(tpr, float) and not math.isnan(tpr)
            found = f"{target}, {sanitized.get('n_flagged', 0)} samples relabelled" + (
                f" (TPR {tpr:.1f})" if known else "")
        asr = _change("the retrained model's ASR", none["asr"], elixir["asr"])
        lines.append(f"DataElixir: {found}; {asr} (clean accuracy {elixir['ca']:.1f}, "
                     f"{none['ca']:.1f} without defense).")
    lines.append(f"See them on the dashboard's Defense results page ({DASHBOARD_URL}/defense_results); "
                 f"DataElixir's per-sample decisions on Sample explorer ({DASHBOARD_URL}/sample_explorer).")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--overlay", default=str(DEMO_OVERLAY.relative_to(PROJECT_ROOT)),
                    help="params overlay applied after --params (default: the demo's budgets); 'none' = no overlay")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. victim.epochs=5")
    ap.add_argument("--max-images", type=int, default=200, help="test images per split for SampDetox evaluation")
    ap.add_argument("--threads", type=int, default=DEMO_THREADS,
                    help=f"torch CPU threads for every stage (default {DEMO_THREADS}; 0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads < 0:
        ap.error(f"--threads must be >= 0, got {args.threads}")
    demo(args.params, args.overrides, args.max_images, args.overlay, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
