"""How DataElixir's relabelling model labels the target-label samples of S in a stored `dataelixir_cifar10_fast.py`
entry (issue #21), by what it trains on and what it is asked about — without the agreement / fine-tuning step, so
one trained model per training set answers every view:

* trained on ``dataset`` (the paper: the set as stage 4 leaves it, S left out) or on ``candidates`` (every kept
  sample's purified candidate);
* asked about each S sample's ``candidate`` (the paper), its ``input`` image, or ``both`` (mean of the softmaxes).

Counts per row: clean target-class samples that keep the target label, label-changing poison given the target back
or its true label. Reads the entry's poisoned training set, the decisions and labels of a ``purify: flagged`` folder
and the images of a ``purify: all`` folder of the same candidates (every image its candidate):

    python benchmarks/dataelixir_relabel_views.py --entry runs/dataelixir_cifar10_fast/seed1/blended \\
        --flagged elixir-4871abb707 --all elixir-bf09559da5 --seed 1 --out benchmarks/results/dataelixir_relabel_views_blended_seed1.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, provenance  # noqa: E402
from detoxops.config import VictimConfig, load_params  # noqa: E402
from detoxops.data import ImageSet  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402
from detoxops.models import build_classifier, predict_logits, train_classifier  # noqa: E402

VIEWS = ("candidate", "input", "both")


def relabel_views(poisoned: ImageSet, stage4: ImageSet, candidates: np.ndarray, in_s: np.ndarray, target: int,
                  arch: str, cfg: VictimConfig) -> dict[str, dict[str, int]]:
    """``{"<trained on>/<view>": counts}`` for the S samples ``in_s`` (a boolean mask over the set)."""
    original = np.asarray(poisoned.original_labels)
    poison = np.asarray(poisoned.poisoned, dtype=bool)[in_s]
    clean_target = ~poison & (original[in_s] == target)
    changing = poison & (original[in_s] != target)
    rows = {}
    for trained_on, images in (("dataset", stage4.images), ("candidates", candidates)):
        kept = ImageSet(images=np.asarray(images)[~in_s], labels=np.asarray(stage4.labels)[~in_s],
                        class_names=poisoned.class_names)
        model = build_classifier(arch, kept.num_classes, kept.images.shape[-1], kept.images.shape[1], seed=cfg.seed,
                                 width=cfg.width, widths=cfg.airbench.widths)
        train_classifier(model, kept, cfg, progress=False)
        model.eval()
        on_candidate = predict_logits(model, candidates[in_s]).softmax(1)
        on_input = predict_logits(model, poisoned.images[in_s]).softmax(1)
        for view, probs in zip(VIEWS, (on_candidate, on_input, (on_candidate + on_input) / 2), strict=True):
            y = probs.argmax(1).numpy()
            rows[f"{trained_on}/{view}"] = {
                "clean_target": int(clean_target.sum()), "clean_target_kept": int((y[clean_target] == target).sum()),
                "label_changing": int(changing.sum()),
                "label_changing_given_target": int((y[changing] == target).sum()),
                "label_changing_true_label": int((y[changing] == original[in_s][changing]).sum()),
            }
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entry", type=Path, required=True, help="runs/dataelixir_cifar10_fast/seed<S>/<attack>")
    ap.add_argument("--flagged", required=True, help="the entry's purify: flagged elixir folder")
    ap.add_argument("--all", dest="all_folder", required=True, help="its purify: all folder (same candidates)")
    ap.add_argument("--seed", type=int, required=True, help="the entry's seed (the relabelling model's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import pandas as pd

    poisoned = ImageSet.load(args.entry / "poisoned" / "train")
    stage4 = ImageSet.load(args.entry / args.flagged / "purified")
    candidates = np.asarray(ImageSet.load(args.entry / args.all_folder / "purified").images)
    summary = json.loads((args.entry / args.flagged / "sanitize.json").read_text())
    if len(summary["target_labels"]) != 1:
        ap.error(f"{args.flagged}: needs exactly one detected target, found {summary['target_labels']}")
    target = int(summary["target_labels"][0])
    decisions = pd.read_csv(args.entry / args.flagged / "purified" / "decisions.csv")
    in_s = ((decisions["set"] == "suspicious") & (decisions["label"] == target)).to_numpy()
    params = load_params(ROOT / "params.yaml", [f"victim.seed={args.seed}", "victim.arch=fast_cnn"], announce=False)
    from detoxops.operations.sanitize import relabel_config

    rows = relabel_views(poisoned, stage4, candidates, in_s, target, "fast_cnn", relabel_config(params))
    for name, row in rows.items():
        print(name, row, flush=True)
    report = {**provenance(__file__, argv, threads=args.threads), "entry": str(args.entry), "flagged": args.flagged,
              "all": args.all_folder, "target": target, "rows": rows}
    atomic_write_text(args.out, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
