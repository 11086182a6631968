"""Plain entry points (no Prefect, no MLflow) for the ``dvc.yaml`` stages that have no ``detoxops`` command.

``purifier``: the purifier the flows would use (configured, shipped for the image size, or trained), as
``pipeline/purifier``.

``defenses``: CA / PA / ASR of ``pipeline/victim`` behind each defense on the ``val`` or held-out ``test`` part
of the test split (the same split as ``flows/sweep.py``), with ``params.sampdetox`` as it is — so
``dvc exp run -S sampdetox.t2=80`` scores one sweep point. Writes ``metrics.json`` (DVC metrics) and
``defenses.csv``.

``report``: joins the victim's metrics (``pipeline/metrics.json``) and the held-out defense rows into
``report/defenses.csv`` (one row per defense, for ``dvc plots show``) and ``report/report.md``, with the
``sanitize`` stage's finding (target labels, TPR / FPR) when its summary is given.

    python -m flows.stages defenses --poisoned pipeline/poisoned --victim pipeline/victim --split val \
        --defenses none,sampdetox --out pipeline/sweep
    python -m flows.stages report --victim-metrics pipeline/metrics.json --defenses pipeline/sampdetox/defenses.csv \
        --out pipeline/report
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["purifier_stage", "defenses_stage", "report_stage", "main"]

COLUMNS = ["defense", "ca", "pa", "asr", "ca_drop", "images_per_s", "n_clean", "n_poisoned"]


def purifier_stage(data: Path, out: Path, params_path: str = "params.yaml",
                   overrides: list[str] | None = None) -> dict[str, Any]:
    """``pipeline/purifier``: the purifier the flows would use (``diffusion.purifier``, else the one shipped for the
    image size, copied), or one trained on the ingested training set when neither exists. Writes ``origin.json``."""
    import shutil

    from detoxops.config import load_params
    from detoxops.data import load_version
    from detoxops.diffusion import purifier_folder, train_purifier
    from detoxops.fileio import atomic_dir

    params = load_params(params_path, overrides)
    train = load_version(data)["train"]
    size = int(train.image_shape[0])
    folder, origin = purifier_folder(params.diffusion.purifier, size)
    with atomic_dir(out, overwrite=True) as tmp:
        if folder is not None:
            shutil.copytree(folder, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint"))
        else:
            cfg = params.diffusion.model_copy(update={"unet": params.diffusion.unet.model_copy(
                update={"sample_size": size})})
            train_purifier(train.images, cfg, tmp, progress=False)
            origin = "trained"
        record = {"origin": origin, "source": str(folder) if folder is not None else str(data), "image_size": size}
        (tmp / "origin.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def defenses_stage(poisoned: Path, victim: Path, split: str, defenses: list[str], out: Path,
                   params_path: str = "params.yaml", overrides: list[str] | None = None,
                   purifier: str | None = None, max_images: int | None = None,
                   clean_source: str | None = None) -> dict[str, Any]:
    import torch

    from detoxops.config import load_params
    from detoxops.data import ImageSet, load_splits
    from detoxops.defenses.catalog import build_defense, needs_purifier
    from detoxops.defenses.evaluation import evaluate_defense, split_eval_sets
    from detoxops.models import load_classifier
    from detoxops.operations import load_chosen_purifier

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    params = load_params(params_path, overrides)
    record = json.loads((poisoned / "attack.json").read_text())
    clean = load_splits(clean_source or params.data.source, params.data, progress=False)["test"]
    triggered = ImageSet.load(poisoned / "test")
    data = split_eval_sets(clean, triggered, record["target"], params.data.val_fraction, params.data.seed)[split]
    data = data.at_most(max_images, params.data.seed)
    pur = (load_chosen_purifier(purifier, params.diffusion, int(clean.image_shape[0]))
           if needs_purifier(defenses) else None)
    classifier = load_classifier(victim)
    rows = [evaluate_defense(classifier, build_defense(d, pur, params.sampdetox, classifier=classifier,
                                                       baselines=params.baselines), data,
                             batch_size=params.sampdetox.batch_size, name=d) for d in defenses]
    base = next((r["ca"] for r in rows if r["defense"] == "none"), None)
    for r in rows:
        r["ca_drop"] = None if base is None else base - r["ca"]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "defenses.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    metrics = {"split": split, "attack": record.get("name", params.attack.name),
               **{r["defense"]: {k: r[k] for k in ("ca", "pa", "asr", "ca_drop") if r.get(k) is not None}
                  for r in rows}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def report_stage(victim_metrics: Path, defenses_csv: Path, out: Path,
                 sanitize_summary: Path | None = None) -> list[dict[str, Any]]:
    victim = json.loads(victim_metrics.read_text()) if victim_metrics.is_file() else {}
    with defenses_csv.open() as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    table = []
    if victim:  # the victim on the whole test split, no defense (pipeline/metrics.json holds fractions)
        table.append({"defense": "victim (full test)", **{k: round(100 * float(victim[k]), 2)
                                                          for k in ("ca", "pa", "asr") if k in victim}})
    for r in rows:
        table.append({"defense": r["defense"], **{k: round(float(r[k]), 2) for k in ("ca", "pa", "asr") if r.get(k)}})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "defenses.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["defense", "ca", "pa", "asr"], extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    md = ["| defense | CA | PA | ASR |", "|---|---:|---:|---:|"]
    md += [f"| {r['defense']} | {r.get('ca', '-')} | {r.get('pa', '-')} | {r.get('asr', '-')} |" for r in table]
    if sanitize_summary is not None and sanitize_summary.is_file():
        md += ["", "DataElixir on the poisoned training set (`sanitize` stage):", "",
               *_sanitize_lines(json.loads(sanitize_summary.read_text()))]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return table


def _sanitize_lines(summary: dict[str, Any]) -> list[str]:
    targets = summary.get("target_labels") or []
    lines = [f"- target label(s) found: {', '.join(map(str, targets)) if targets else 'none'}",
             f"- samples flagged: {summary.get('flagged', '-')}"]
    if "tpr" in summary:
        lines.append(f"- TPR {100 * summary['tpr']:.1f} %, FPR {100 * summary['fpr']:.1f} % (ground-truth poison flags)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("defenses", help="CA / PA / ASR per defense on the val or held-out test split")
    d.add_argument("--poisoned", type=Path, required=True)
    d.add_argument("--victim", type=Path, required=True)
    d.add_argument("--split", choices=("val", "test"), default="val")
    d.add_argument("--defenses", default="none,sampdetox")
    d.add_argument("--purifier", default=None, help="default: diffusion.purifier, else the shipped one")
    d.add_argument("--max-images", type=int, default=0, help="0 = all")
    d.add_argument("--clean", default=None, help="data source of the clean test split (default: data.source), "
                   "e.g. the ingest stage's pipeline/raw")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--params", default="params.yaml")
    d.add_argument("--set", dest="overrides", action="append", default=[])
    pu = sub.add_parser("purifier", help="the configured / shipped purifier (copied), else one trained on --data")
    pu.add_argument("--data", type=Path, required=True, help="a dataset version folder (the ingest stage's)")
    pu.add_argument("--out", type=Path, required=True)
    pu.add_argument("--params", default="params.yaml")
    pu.add_argument("--set", dest="overrides", action="append", default=[])
    r = sub.add_parser("report", help="the per-defense table for `dvc plots show`")
    r.add_argument("--victim-metrics", type=Path, required=True)
    r.add_argument("--defenses", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--sanitize", type=Path, default=None, help="summary JSON of `detoxops sanitize --summary`")
    args = ap.parse_args(argv)
    if args.cmd == "purifier":
        print(json.dumps(purifier_stage(args.data, args.out, args.params, args.overrides)))
    elif args.cmd == "defenses":
        names = [x.strip() for x in args.defenses.split(",") if x.strip()]
        m = defenses_stage(args.poisoned, args.victim, args.split, names, args.out, args.params, args.overrides,
                           args.purifier, args.max_images or None, args.clean)
        print(json.dumps(m, indent=2))
    else:
        for row in report_stage(args.victim_metrics, args.defenses, args.out, args.sanitize):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
