"""Does a victim learn the trigger or memorise the poisoned samples? Train-set fit against test-set ASR.

For every attack entry of an ``attack_table.py`` work folder (``<work>/<attack>/{train,test,victim}``) this reports
the victim's accuracy on the clean training samples, the rate at which it predicts the target on the poisoned
training samples whose original label is not the target (what it was trained to do), and the ASR on the
triggered test images it has never seen. A victim that fits the poisoned training samples perfectly but reaches a
much lower test ASR has memorised those samples one by one rather than learned the trigger.

    python benchmarks/backdoor_generalisation.py --work runs/shared/cifar10_cpu_noaug_w32 \
        --attacks badnets blended lf refool --out-json benchmarks/results/backdoor_generalisation_w32.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from detoxops.data import ImageSet
from detoxops.metrics import attack_success_rate, clean_accuracy
from detoxops.models import load_classifier, predict


def entry_rates(folder: Path) -> dict[str, float | int]:
    train, test = ImageSet.load(folder / "train"), ImageSet.load(folder / "test")
    poisoned = train.poisoned.astype(bool)
    targets = np.unique(train.labels[poisoned])  # all-to-one: every poisoned sample carries the target label
    if len(targets) != 1:
        raise SystemExit(f"{folder}: poisoned training samples carry labels {targets.tolist()}, not one target")
    target = int(targets[0])
    model = load_classifier(folder / "victim").eval()
    pred_train = predict(model, train.images)
    relabelled = poisoned & (train.original_labels != target)
    return {
        "target": target,
        "train_clean_acc": clean_accuracy(pred_train[~poisoned], train.labels[~poisoned]),
        "train_poisoned_to_target": (attack_success_rate(pred_train[relabelled], target) if relabelled.any()
                                     else float("nan")),
        "train_poisoned": int(relabelled.sum()),
        "test_asr": attack_success_rate(predict(model, test.images), target),
        "test_triggered": int(len(test.images)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="an attack_table.py --work folder")
    ap.add_argument("--attacks", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.attacks:
        folder = args.work / name
        if not (folder / "victim").exists():
            raise SystemExit(f"{folder}: no victim (run benchmarks/attack_table.py for '{name}' first)")
        rows.append({"attack": name, **entry_rates(folder)})
    lines = ["| attack | clean train acc | poisoned train → target | test ASR |", "|---|---|---|---|"]
    for r in rows:
        fit = (f"{100 * r['train_poisoned_to_target']:.1f} ({r['train_poisoned']})" if r["train_poisoned"]
               else "– (clean-label: no relabelled samples)")
        lines.append(f"| {r['attack']} | {100 * r['train_clean_acc']:.1f} | {fit} | {100 * r['test_asr']:.1f} "
                     f"({r['test_triggered']}) |")
    print("\n".join(lines))
    if args.out_json is not None:
        command = "python benchmarks/backdoor_generalisation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps({"command": command, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
