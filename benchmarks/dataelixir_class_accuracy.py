"""Per-class test accuracy of the models a `dataelixir_cifar10_fast.py` entry left in its work folder (issue #21):
where does the retrained model's accuracy go? Reads ``<work>/seed<S>/reference`` and each named entry's
``<attack>/<elixir folder>/retrained``; the test split is the benchmark's (whole CIFAR-10 test split). For each
entry with a detected target it also audits the purified set's labels (``purified/decisions.csv``): what became of
the clean samples carrying the target label (the only clean samples stage 4 may relabel) and of the poison.

    python benchmarks/dataelixir_class_accuracy.py --seed 1 --entries blended/elixir-4871abb707 \\
        blended/elixir-eed2391015 --out benchmarks/results/dataelixir_class_accuracy_seed1.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from detoxops.config import DataConfig
from detoxops.data import load_source
from detoxops.defenses.dataelixir import purify_extra
from detoxops.fileio import atomic_write_text
from detoxops.models import load_classifier, predict

ROOT = Path(__file__).resolve().parents[1]


def class_accuracy(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    pred = predict(load_classifier(model_dir).float().eval(), images)
    per_class = [float((pred[labels == c] == c).mean()) for c in range(int(labels.max()) + 1)]
    return {"acc": float((pred == labels).mean()), "per_class": per_class,
            "predicted_share": np.bincount(pred, minlength=len(per_class)).tolist()}


def _auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties counted half; None without both."""
    if not len(positive) or not len(negative):
        return None
    above = (positive[:, None] > negative[None, :]).mean() + 0.5 * (positive[:, None] == negative[None, :]).mean()
    return round(float(above), 4)


def label_audit(decisions_csv: Path, targets: list[int]) -> dict:
    """Counts from a sanitised set's decisions: clean target-label samples by set and whether they kept their
    label; poison carrying a target label by set and whether it kept it; every clean sample whose label changed
    (the false positives); the share of purified images per final label; and, among the target-label samples of B,
    how well the chosen candidate's distance tells the poisoned ones (AUC; how many lie beyond one MAD above the
    median, as ``purify: target_distant`` chooses)."""
    import pandas as pd

    d = pd.read_csv(decisions_csv)
    is_target, poisoned = d["label"].isin(targets), d["poisoned_true"] == 1
    clean_t, poison_t = d[is_target & ~poisoned], d[is_target & poisoned]
    by_set = lambda frame, kept: {s: {"n": int((frame["set"] == s).sum()),  # noqa: E731
                                      "kept_target": int(((frame["set"] == s) & kept(frame)).sum())}
                                  for s in ("benign", "poisoned", "suspicious")}
    final = d.groupby("final_label")
    benign = (d["set"] == "benign").to_numpy()
    in_b = d[is_target & benign]  # what purify: target_distant chooses from, and what it chooses (one MAD)
    b_dist, b_poison = in_b["chosen_distance"].to_numpy(float), (in_b["poisoned_true"] == 1).to_numpy()
    far = purify_extra("target_distant", is_target.to_numpy(), benign, d["chosen_distance"].to_numpy(float),
                       1.0)[(is_target & benign).to_numpy()]
    return {
        "targets": targets,
        "clean_target_samples": int(len(clean_t)),
        "clean_target_lost_label": int((~clean_t["final_label"].isin(targets)).sum()),
        "clean_target_by_set": by_set(clean_t, lambda f: f["final_label"].isin(targets)),
        "poison_with_target_label": int(len(poison_t)),  # (decisions.csv has no source class: the poison that
        "poison_by_set": by_set(poison_t, lambda f: f["final_label"].isin(targets)),  # was a target already too)
        "false_positives": int(((d["poisoned_true"] == 0) & (d["flagged"] == 1)).sum()),
        "final_label_counts": final.size().astype(int).tolist(),
        "b_target": {"n": int(len(in_b)), "poisoned": int(b_poison.sum()),
                     "distance_auc": _auc(b_dist[b_poison], b_dist[~b_poison]),
                     "beyond_one_mad": int(far.sum()), "beyond_one_mad_poisoned": int((far & b_poison).sum())},
        "purified_share_by_final_label": [round(float(v), 4) for v in final["chosen_round"].apply(
            lambda r: (r >= 0).mean())],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "dataelixir_cifar10_fast"))
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--entries", nargs="+", required=True, help="<attack>/<elixir folder> of the seed's work folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DataConfig(source=args.source, image_size=None, train_per_class=1000, test_per_class=None, seed=args.seed,
                     root=str(ROOT / "data"))
    test = load_source(args.source, cfg, progress=False)["test"]
    seed_dir = Path(args.work) / f"seed{args.seed}"
    models = {"reference": seed_dir / "reference"} | {e: seed_dir / e / "retrained" for e in args.entries}
    rows = {}
    for name, folder in models.items():
        rows[name] = class_accuracy(folder, test.images, test.labels)
        summary = folder.parent / "sanitize.json"
        if name != "reference" and summary.is_file() and json.loads(summary.read_text())["target_labels"]:
            rows[name]["labels"] = label_audit(folder.parent / "purified" / "decisions.csv",
                                               json.loads(summary.read_text())["target_labels"])
        print(name, json.dumps({k: v for k, v in rows[name].items() if k == "acc"}), flush=True)
    atomic_write_text(args.out, json.dumps({"command": shlex.join(["python", *sys.argv]), "seed": args.seed,
                                            "models": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
