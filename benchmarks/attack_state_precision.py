"""Does storing a fitted trigger in fp16 change the trigger? (issue #19: the victim store keeps the float tensors of
SSBA's StegaStamp and the Input-Aware / LIRA generators in fp16, :func:`detoxops.models.store.store_attack_state`.)

For each ``NAME=ATTACK_RUN`` pair: the attack rebuilt from the fp32 attack run (``detoxops attack run`` output) and
from the record the store keeps (:func:`~detoxops.models.store.store_attack_state`: fp16, trigger part only)
trigger the same N non-target CIFAR-10 test images; reported: the share of triggered pixel values that differ, the
largest difference in grey levels, and the store victim's ASR on both triggered sets.

    python benchmarks/attack_state_precision.py --n 1000 \\
        --pair cifar10-fast/ssba=runs/zoo/cifar10-fast/ssba/poisoned \\
        --pair cifar10-fast/lira=runs/zoo/cifar10-fast/lira/poisoned \\
        --out benchmarks/results/attack_state_precision.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _record import provenance
from detoxops.attacks import registry
from detoxops.config import DataConfig
from detoxops.data import load_splits
from detoxops.fileio import atomic_write_text
from detoxops.models import load_classifier, predict
from detoxops.models.store import store_attack_state

ROOT = Path(__file__).resolve().parents[1]


def compare(victim: str, attack_run: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    full = registry.from_record(attack_run)
    with tempfile.TemporaryDirectory() as tmp:
        half = registry.from_record(store_attack_state(tmp, attack_run))  # exactly the store's copy
        trig32, _, _ = full.poison_test_arrays(images, labels)
        trig16, _, _ = half.poison_test_arrays(images, labels)
    model = load_classifier(victim).float().eval()
    diff = np.abs(trig32.astype(np.int16) - trig16.astype(np.int16))
    pred32, pred16 = predict(model, trig32), predict(model, trig16)
    return {"victim": victim, "attack_run": str(attack_run), "n": int(len(trig32)),
            "pixels_differing_pct": round(100 * float(np.mean(diff > 0)), 4), "max_diff_grey_levels": int(diff.max()),
            "asr_fp32_state": round(100 * float(np.mean(pred32 == full.target)), 2),
            "asr_fp16_state": round(100 * float(np.mean(pred16 == full.target)), 2),
            "predictions_differing": int(np.sum(pred32 != pred16))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", action="append", required=True, metavar="VICTIM=ATTACK_RUN",
                    help="a store victim and the fp32 attack run it was trained with (repeatable)")
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--n", type=int, default=1000, help="test images drawn (non-target ones are triggered)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    pairs = []
    for pair in args.pair:
        victim, sep, run = pair.partition("=")
        if not sep or not (Path(run) / "state").is_dir():
            ap.error(f"--pair {pair!r}: expected VICTIM=ATTACK_RUN with ATTACK_RUN/state/")
        pairs.append((victim, Path(run)))
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    test = load_splits(args.data, DataConfig(source=args.data, image_size=None, train_per_class=None,
                                             test_per_class=None), progress=False)["test"]
    idx = np.sort(np.random.default_rng(args.seed).permutation(len(test))[: args.n])
    rows = []
    for victim, run in pairs:
        rows.append(compare(victim, run, test.images[idx], test.labels[idx]))
        print(rows[-1], flush=True)
    record = {"rows": rows, "seed": args.seed,
              "seconds": round(time.perf_counter() - t0, 1)} | provenance(__file__, argv, args.threads)
    atomic_write_text(args.out, json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
