"""What a victim says about *clean* images after a defense: accuracy and the share labelled as its attack's target,
on the defended clean held-out images that ``patch_repair_eval.py table --cache`` stored (no diffusion is rerun).
A victim whose backdoor keys on what a purifier produces (LF's low-frequency trigger) labels restored clean images
as its target, so the defense itself fires the backdoor. Also the label drift each defense causes
(:func:`detoxops.defenses.drift.label_drift`: the victim's labels of the undefended images as reference, the
largest net inflow into one class), the check a user can run without knowing the target; ``clean`` (no attack)
is accepted as a victim.

    python benchmarks/defended_clean_labels.py --victims clean,lf,sig,ssba,badnets --cache runs/patch_repair_cache \\
        --out benchmarks/results/defended_clean_labels.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detoxops.defenses.drift import label_drift  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402
from detoxops.models.store import victim_attack  # noqa: E402
from patch_repair_eval import clean_test  # noqa: E402
from sampdetox_eval import split_indices  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--victims", required=True, help="comma-separated store attacks (victims/<store>/<name>)")
    ap.add_argument("--store", default="cifar10-fast")
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--cache", type=Path, required=True, help="a `table --cache` folder (clean_<defense>_*.npz)")
    ap.add_argument("--n-clean", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    clean = clean_test(args.data)
    cidx = split_indices(clean, "test", args.n_clean, seed=0)
    defended = {}
    for path in sorted(args.cache.glob("clean_*.npz")):
        z = np.load(path)
        if len(z["images"]) == len(cidx):
            defended[path.stem.split("_")[1]] = z["images"]
    if "none" not in defended or not np.array_equal(defended["none"], clean.images[cidx]):
        raise SystemExit(f"{args.cache}: no stored undefended images equal to the {len(cidx)} held-out clean images")
    rows = {}
    for name in filter(None, args.victims.split(",")):
        ref = f"{args.store}/{name}"
        attack = victim_attack(ref)
        model, target = load_classifier(ref).float().eval(), None if attack is None else int(attack.target)
        labels = {d: predict(model, imgs) for d, imgs in defended.items()}
        rows[name] = {}
        for d, p in labels.items():
            drift = label_drift(labels["none"], p, len(clean.class_names))
            rows[name][d] = {"accuracy": 100 * float(np.mean(p == clean.labels[cidx])),
                             "labelled_target": None if target is None else 100 * float(np.mean(p == target)),
                             "drift_changed": 100 * drift.changed, "drift_top_class": drift.top_class,
                             "drift_top_inflow": 100 * drift.top_inflow}
        print(name, json.dumps(rows[name]), flush=True)
    record = {"command": shlex.join(["python", *sys.argv]), "images": f"{len(cidx)} held-out clean test images",
              "defenses": sorted(defended), "rows": rows}
    atomic_write_text(args.out, json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
