"""Re-run DataElixir's stages 2-3 (label transitions, target-label detection) on the stored candidate sets of a
``benchmarks/dataelixir_cifar10_fast.py`` entry, keeping only the candidates of chosen levels — no UNet pass, no
training. What it answers: which kept intermediaries make the detection fail (e.g. DDIM's noisy x_t at levels
30 / 20 read as one class by the victim), before paying for a new candidate run.

    .venv/bin/python benchmarks/dataelixir_reanalyse_candidates.py runs/dataelixir_cifar10_fast/seed1/badnets \
        --elixir elixir-<key> --levels 0 --levels 10 0 [--first-rounds 1 2 3]

``--first-rounds K ...`` also keeps only the candidates of the first K rounds: what fewer rounds (K / rounds of the
candidate cost) would have detected, from one stored run.

Stage 4 is not re-run: the purified image of a sample is stored for the selected candidate only, and the
suspicious samples need the relabelling model. Reported per level set: target labels, B / P / S counts, and the
detection rates of the label change stage 4 makes without the relabelling model (target-label samples in P get
their candidate vote); the target-label samples in S are counted apart (they would need the relabelling model).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from _record import provenance
from dataelixir_cifar10_fast import LATER_FIELDS, stored_purifiers
from detoxops.config import DataElixirConfig, load_params
from detoxops.data import ImageSet
from detoxops.defenses.dataelixir import DataElixir, module_fingerprint
from detoxops.defenses.elixir.candidates import kept_levels
from detoxops.defenses.elixir.target_label import detect_target_labels
from detoxops.defenses.elixir.transitions import POISONED, SUSPICIOUS, analyse_transitions
from detoxops.fileio import atomic_write_text
from detoxops.metrics import detection_rates
from detoxops.models import load_classifier
from detoxops.operations import load_chosen_purifier

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("entry", help="<work>/seed<S>/<attack> of dataelixir_cifar10_fast.py")
    ap.add_argument("--elixir", required=True, help="the elixir-<key> folder inside the entry")
    ap.add_argument("--levels", nargs="+", type=int, action="append", required=True,
                    help="levels to keep (repeat the option for several sets)")
    ap.add_argument("--first-rounds", nargs="+", type=int, default=None,
                    help="also analyse the candidates of the first K rounds only (default: all rounds)")
    ap.add_argument("--purifier", default=None, help="the purifier the candidates were made with (folder or shipped "
                    "name; default: the shipped one for the image size). Checked against the stored shards")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    entry = Path(args.entry)
    result = json.loads((entry / args.elixir / "result.json").read_text())
    # the settings the run recorded (resolved); a field it predates ran with its first value
    cfg = DataElixirConfig(**{**LATER_FIELDS, **result["dataelixir"]})
    train = ImageSet.load(entry / "poisoned" / "train") if (entry / "poisoned").is_dir() else None
    if train is None:
        raise SystemExit(f"{entry}: no poisoned/ folder (the clean entry is not supported)")
    victim = load_classifier(entry / "victim")
    purifier = load_chosen_purifier(args.purifier, load_params(ROOT / "params.yaml", announce=False).diffusion,
                                    int(train.image_shape[0]))
    # never recompute by accident: the shards must have been made with this purifier
    stored = stored_purifiers(entry / args.elixir)
    if module_fingerprint(purifier.unet) not in stored:
        raise SystemExit(f"{entry / args.elixir}: its candidates were made with purifier(s) {sorted(stored)}, not "
                         f"with {args.purifier or 'the shipped default'} ({module_fingerprint(purifier.unet)}); "
                         "pass that purifier with --purifier")
    # the stored shards of exactly these settings (the work store is keyed by data, victim, purifier and cfg):
    # every shard is finished, so nothing is computed
    cand = DataElixir(purifier, cfg).candidate_sets(train, victim, entry / args.elixir / "work", progress=False)
    per_round = kept_levels(cfg)
    column_levels = per_round * cfg.rounds
    labels = np.asarray(train.labels)
    flags = np.asarray(train.poisoned, dtype=bool)
    label_changing = flags & (labels != train.original_labels)  # poison whose label the attack changed
    column_rounds = [r for r in range(1, cfg.rounds + 1) for _ in per_round]
    first_rounds = args.first_rounds or [cfg.rounds]
    bad = [k for k in first_rounds if not 1 <= k <= cfg.rounds]
    if bad:
        raise SystemExit(f"--first-rounds {bad}: the run has rounds 1..{cfg.rounds}")
    rows = []
    for levels, upto in ((lv, k) for lv in args.levels for k in first_rounds):
        missing = sorted(set(levels) - set(per_round))
        if missing:
            raise SystemExit(f"levels {missing} were not kept (kept per round: {per_round})")
        cols = [k for k, lv in enumerate(column_levels) if lv in levels and column_rounds[k] <= upto]
        cl = cand["labels"][:, cols].astype(np.int64)
        for tau in sorted({cfg.tau, float(max(1, math.ceil(len(cols) / 2)))}):
            tr = analyse_transitions(cl, labels, train.num_classes, tau, cfg.mixed)  # the run's own rule
            det = detect_target_labels(tr.counts, labels, tr.sets != 0, train.num_classes, cfg.anomaly_threshold,
                                       cfg.target_rule, min_support=math.ceil(cfg.min_target_share * len(labels)))
            is_target = np.isin(labels, det.target_labels)
            new = labels.copy()
            in_p = is_target & (tr.sets == POISONED)
            new[in_p] = tr.consensus[in_p]
            tpr, fpr = detection_rates(labels, new, flags)
            row = {"levels": levels, "rounds": upto, "candidates": len(cols), "tau": tau, "target_labels": det.target_labels,
                   "sets": {"benign": int((tr.sets == 0).sum()), "poisoned": int((tr.sets == POISONED).sum()),
                            "suspicious": int((tr.sets == SUSPICIOUS).sum())},
                   "poisoned_in_P": int((flags & (tr.sets == POISONED)).sum()),
                   "target_in_S": int((is_target & (tr.sets == SUSPICIOUS)).sum()),
                   "tpr_P_only": tpr, "fpr_P_only": fpr,
                   "tpr_P_only_label_changing": float((new != labels)[label_changing].mean())
                   if label_changing.any() else None,
                   "kl_index": np.round(det.kl_index, 2).tolist(), "count_index": np.round(det.count_index, 2).tolist()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps({"entry": str(entry), "elixir": args.elixir,
                                                "dataelixir": result["dataelixir"], "rows": rows}
                                               | provenance(__file__, argv, 1), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
