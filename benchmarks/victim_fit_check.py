"""Does a store victim fit its backdoor on its own training images? Clean accuracy and ASR on random non-target
training images and test images, each triggered by the victim's own attack record (issue #19: the reason a loop
attack's ASR stays low — an ASR as low on training images as on test images means the backdoor was not learned,
not that it failed to generalise).

    python benchmarks/victim_fit_check.py --victim cifar10-fast/wanet --n 2000 \\
        --out benchmarks/results/victim_fit_check_wanet.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _record import provenance
from detoxops.config import DataConfig
from detoxops.data import load_splits
from detoxops.fileio import atomic_write_text
from detoxops.models import load_classifier, predict
from detoxops.models.store import victim_attack


def fit_check(victim: str, source: str, n: int, seed: int = 0) -> dict:
    splits = load_splits(source, DataConfig(source=source, image_size=None, train_per_class=None,
                                            test_per_class=None), progress=False)
    model, attack = load_classifier(victim).float().eval(), victim_attack(victim)
    out = {}
    for name in ("train", "test"):
        s = splits[name]
        pool = np.nonzero(s.labels != attack.target)[0]
        idx = np.sort(np.random.default_rng(seed).permutation(pool)[:n])
        triggered, _, _ = attack.poison_test_arrays(s.images[idx], s.labels[idx])
        out[name] = {"n": int(len(idx)),
                     "clean_accuracy": 100 * float(np.mean(predict(model, s.images[idx]) == s.labels[idx])),
                     "asr": 100 * float(np.mean(predict(model, triggered) == attack.target))}
        print(name, out[name], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--victim", required=True, help="victim-store name or classifier folder with an attack record")
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--n", type=int, default=2000, help="non-target images per split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    record = {"victim": args.victim, "data": args.data, "seed": args.seed,
              "splits": fit_check(args.victim, args.data, args.n, args.seed),
              "seconds": round(time.perf_counter() - t0, 1)} | provenance(__file__, argv, args.threads)
    atomic_write_text(args.out, json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
