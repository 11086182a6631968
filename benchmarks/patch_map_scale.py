"""Does the context map's block size decide which triggers it sees? (issue #20)

For each ``--blocks`` size, the context maps (the repair's, cached in ``--cache`` under the keys ``patch_repair_eval.py
confirm --split val`` uses) of the validation half's first ``--n-clean`` clean images and ``--n-poisoned`` triggered
images per attack, and per attack: the per-image pixel ROC-AUC of the map for the trigger's pixels, the share of
trigger pixels above the clean pixels' ``--pixel-rate`` quantile, how often the map's peak lies on the trigger, and
the gate's ROC-AUC (peaks of triggered against clean images).

    python benchmarks/patch_map_scale.py --attacks badnets,trojannn --blocks 4,8 --cache runs/patch_repair_cache \\
        --out benchmarks/results/patch_map_scale.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patch_repair_eval as pre  # noqa: E402
from detoxops.config import PatchRepairConfig  # noqa: E402
from detoxops.defenses.map_quality import changed_pixels, roc_auc  # noqa: E402
from detoxops.defenses.patch_repair import PatchRepair  # noqa: E402
from detoxops.diffusion import load_purifier  # noqa: E402
from detoxops.models.store import victim_attack  # noqa: E402
from sampdetox_eval import split_indices  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--store", default="cifar10-fast")
    ap.add_argument("--attacks", default="badnets,trojannn")
    ap.add_argument("--blocks", default="4,8")
    ap.add_argument("--purifier", type=Path, default=pre.SHIPPED_PURIFIER)
    ap.add_argument("--n-clean", type=int, default=100)
    ap.add_argument("--n-poisoned", type=int, default=100)
    ap.add_argument("--pixel-rate", type=float, default=0.07)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    purifier, key = load_purifier(args.purifier), pre.purifier_key(args.purifier)
    clean = pre.clean_test(args.data)
    cidx = split_indices(clean, "val", args.n_clean, seed=0)
    rows = []
    for block in map(int, args.blocks.split(",")):
        # thresholds are not used by the map; explicit values keep the calibration file out of it
        repair = PatchRepair(purifier, PatchRepairConfig(block=block, gate_threshold=1.0, pixel_threshold=1.0))
        clean_maps, _ = pre.stored_context_maps(args.cache, "val_clean", repair, clean.images[cidx], args.batch,
                                                args.seed, key)
        clean_peaks = clean_maps.reshape(len(clean_maps), -1).max(1)
        level = float(np.quantile(clean_maps, 1 - args.pixel_rate))
        for name in filter(None, args.attacks.split(",")):
            attack = victim_attack(f"{args.store}/{name}")
            pidx, triggered, _ = pre.triggered_set(clean, "val", attack, args.n_poisoned, args.seed)
            maps = pre.triggered_context_maps(args.cache, "val", name, repair, triggered, args.batch, args.seed, key)
            mask = changed_pixels(clean.images[pidx], triggered, tolerance=0)  # the pixels the trigger changed
            flat, flat_mask = maps.reshape(len(maps), -1), mask.reshape(len(mask), -1)
            peaks = flat.max(1)
            labels = np.r_[np.zeros(len(clean_peaks)), np.ones(len(peaks))].astype(bool)
            rows.append({
                "block": block, "attack": name, "pixel_level": level,
                "pixel_auc": float(np.nanmean(roc_auc(maps, mask))),
                "trigger_pixels_flagged": float((maps[mask] > level).mean()),
                "peak_on_trigger": float(flat_mask[np.arange(len(flat)), flat.argmax(1)].mean()),
                "gate_auc": float(roc_auc(np.r_[clean_peaks, peaks], labels, per_image=False)),
                "trigger_pixels_median": float(np.median(flat_mask.sum(1))),
            })
            print(json.dumps(rows[-1]), flush=True)
    pre._write(args.out, {"command": shlex.join(["python", *sys.argv]), "purifier": key, "split": "val",
                          "n_clean": len(cidx), "n_poisoned": args.n_poisoned, "pixel_rate": args.pixel_rate,
                          "rows": rows})


if __name__ == "__main__":
    main()
