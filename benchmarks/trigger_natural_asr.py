"""How often do models that never saw a trigger label its triggered images as the target? (issue #21.)

The retrained ASR of a defense is read as "what is left of the backdoor". That reading needs models trained
without the poison to stay near 0 on the triggered images; a trigger that pushes images far from the training
distribution can instead send a clean model's predictions to one or two classes, and when one of them happens to
be the target, a model without any backdoor scores a high "ASR". This scores every classifier folder under the
given work folders on one entry's triggered test set (its non-target test images with the trigger) and marks the
models that were trained on that attack's poisoned images:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trigger_natural_asr.py \\
        --triggered runs/dataelixir_cifar10_fast/seed0/ftrojan/poisoned/test --attack ftrojan --seed 0 \\
        --work runs/dataelixir_cifar10_fast runs/dataelixir_cifar10_fast_wanet_aug runs/dataelixir_cifar10_fast_recipe_aug \\
        --out benchmarks/results/trigger_natural_asr_ftrojan_seed0.json

Each model gets a kind: ``this_attack`` (under ``seed<S>/<attack>/``: its victim and every model retrained on its
sanitised set, except the ``drop_poison`` oracle, which was trained without any poisoned image), ``victim`` (another
attack's backdoored victim: left out of the summary), ``unpoisoned`` (the references and the clean entry's models,
and ``drop_poison``) and ``other_sanitised`` (retrained on another attack's sanitised set: never saw this trigger).
Reported: per model, the share of the triggered images labelled as the target and the share in its most frequent
class; per kind, the range and median of the target share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import provenance  # noqa: E402
from detoxops.data import ImageSet  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402

KINDS = ("this_attack", "victim", "unpoisoned", "other_sanitised")


def model_kind(folder: Path, work: Path, attack: str) -> str:
    """The kind of the model in ``folder`` (``<work>/seed<S>/...``; see the module docstring)."""
    parts = folder.relative_to(work).parts[1:]  # below seed<S>/
    if "drop_poison" in parts or parts[0].startswith("reference") or parts[0] == "clean":
        return "unpoisoned"
    if parts[0] == attack:
        return "this_attack"
    return "victim" if parts[-1] == "victim" else "other_sanitised"


def classifier_folders(work: Path, seed: int) -> list[Path]:
    """Every saved classifier (``classifier.json``) of the seed's folder, in path order."""
    return sorted(p.parent for p in (work / f"seed{seed}").rglob("classifier.json"))


def summarise(rows: list[dict]) -> dict:
    """Per kind: how many models, the range and median of their target share, how many exceed 5 %."""
    out = {}
    for kind in KINDS:
        shares = [r["target_share"] for r in rows if r["kind"] == kind]
        if shares:
            out[kind] = {"models": len(shares), "min": min(shares), "median": float(np.median(shares)),
                         "max": max(shares), "above_5_percent": int(sum(v > 0.05 for v in shares))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triggered", type=Path, required=True, help="the entry's poisoned/test (its triggered images)")
    ap.add_argument("--attack", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--work", type=Path, nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    triggered = ImageSet.load(args.triggered)
    target = int(json.loads((args.triggered.parent / "attack.json").read_text())["target"])
    rows = []
    for work in args.work:
        for folder in classifier_folders(work, args.seed):
            pred = predict(load_classifier(folder), triggered.images)
            counts = np.bincount(pred, minlength=triggered.num_classes)
            row = {"model": str(folder), "kind": model_kind(folder, work, args.attack),
                   "target_share": float(counts[target] / len(pred)),
                   "top_class": int(counts.argmax()), "top_share": float(counts.max() / len(pred))}
            rows.append(row)
            print(f"{row['kind']:16s} {100 * row['target_share']:5.1f}% "
                  f"(top {row['top_class']}: {100 * row['top_share']:.1f}%)  {folder}", flush=True)
    report = {**provenance(__file__, argv, threads=args.threads), "triggered": str(args.triggered),
              "attack": args.attack, "seed": args.seed, "target": target, "images": len(triggered),
              "by_kind": summarise(rows), "rows": rows}
    print(json.dumps(report["by_kind"]), flush=True)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
