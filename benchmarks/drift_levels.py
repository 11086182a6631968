"""Lower noise levels against the backdoors a defense fires itself (issue #20): CA / PA / ASR and the label drift
(:func:`detoxops.defenses.drift.label_drift`) of SampDetox settings on store victims, on the validation half.

SampDetox's restorations of clean CIFAR-10 images fire the LF, Refool and LIRA victims' backdoors
(docs/sampdetox.md). Does a lower t1 / t2 stop that, what does it cost against the triggers, and does the drift
check (which needs no triggered image) pick the settings a user should deploy? Each setting defends the same clean
validation images once (the victims share them) and each attack's triggered validation images; the victims' labels
of the undefended clean images are the drift reference.

    python benchmarks/drift_levels.py --victims clean,lf,refool,lira,badnets,blended --n-clean 100 --n-poisoned 100 \\
        --setting "faithful:profile=faithful" --setting "faithful_t10_60:profile=faithful,t1=10,t2=60" \\
        --out benchmarks/results/drift_levels_val.json
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
from detoxops.config import SampDetoxConfig  # noqa: E402
from detoxops.defenses.drift import label_drift  # noqa: E402
from detoxops.defenses.sampdetox import SampDetox  # noqa: E402
from detoxops.diffusion import load_purifier  # noqa: E402
from detoxops.diffusion.unet import shipped_purifier_dir  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402
from detoxops.models.store import victim_attack  # noqa: E402
from patch_repair_eval import clean_test, defend  # noqa: E402
from sampdetox_eval import split_indices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    name, sep, body = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--setting {text!r}: expected NAME:key=value,key=value")
    pairs = dict(kv.split("=", 1) for kv in filter(None, body.split(",")))
    return name, pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--victims", default="clean,lf,refool,lira,badnets,blended")
    ap.add_argument("--store", default="cifar10-fast")
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--purifier", type=Path, default=shipped_purifier_dir("cifar10-32"))
    ap.add_argument("--setting", action="append", required=True, metavar="NAME:key=value,...",
                    help="a SampDetox setting (sampdetox.* keys; sampler ddim unless given), repeatable")
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--n-clean", type=int, default=100)
    ap.add_argument("--n-poisoned", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = [parse_setting(s) for s in args.setting]
    purifier = load_purifier(args.purifier)
    clean = clean_test(args.data)
    cidx = split_indices(clean, args.split, args.n_clean, seed=0)
    half = split_indices(clean, args.split, len(clean), seed=0)
    victims = {}
    for name in filter(None, args.victims.split(",")):
        ref = f"{args.store}/{name}"
        model, attack = load_classifier(ref).float().eval(), victim_attack(ref)
        entry = {"model": model, "attack": attack, "none_clean": predict(model, clean.images[cidx])}
        if attack is not None:
            pool = half[clean.labels[half] != attack.target]
            pidx = np.sort(np.random.default_rng(args.seed).permutation(pool)[: args.n_poisoned])
            entry["triggered"], entry["true"], _ = attack.poison_test_arrays(clean.images[pidx], clean.labels[pidx])
        victims[name] = entry

    record = {"split": args.split, "n_clean": int(len(cidx)),
              "n_poisoned": args.n_poisoned, "seed": args.seed, "purifier": str(args.purifier), "rows": []}
    if args.out.is_file():  # resume: settings already measured with the same images are kept
        old = json.loads(args.out.read_text())
        if (old.get("split"), old.get("n_clean"), old.get("n_poisoned"), old.get("seed")) == \
                (args.split, int(len(cidx)), args.n_poisoned, args.seed):
            record["rows"] = old["rows"]
    done = {(r["setting"], r["victim"]) for r in record["rows"]}
    for setting, overrides in settings:
        wanted = [v for v in victims if (setting, v) not in done]
        if not wanted:
            continue
        cfg = SampDetoxConfig.model_validate({"sampler": "ddim", **overrides})
        defense = SampDetox(purifier, cfg)
        clean_imgs, _, clean_secs, _ = defend(defense, clean.images[cidx], args.batch, args.seed, f"{setting}/clean")
        for name in wanted:
            v = victims[name]
            after = predict(v["model"], clean_imgs)
            drift = label_drift(v["none_clean"], after, len(clean.class_names))
            row = {"setting": setting, "overrides": overrides, "resolved": cfg.resolved().model_dump(
                       mode="json", include={"profile", "t1", "t2", "sampler", "ddim_stride", "localiser"}),
                   "victim": name, "ca": 100 * float(np.mean(after == clean.labels[cidx])),
                   "ca_none": 100 * float(np.mean(v["none_clean"] == clean.labels[cidx])),
                   "drift_changed": 100 * drift.changed, "drift_class": drift.top_class,
                   "drift_inflow": 100 * drift.top_inflow, "drift_flagged": drift.flagged,
                   "clean_seconds": round(clean_secs, 1)}
            if v["attack"] is not None:
                trig, _, secs, _ = defend(defense, v["triggered"], args.batch, args.seed + 1, f"{setting}/{name}")
                pred = predict(v["model"], trig)
                none_pred = predict(v["model"], v["triggered"])
                row |= {"target": int(v["attack"].target), "pa": 100 * float(np.mean(pred == v["true"])),
                        "asr": 100 * float(np.mean(pred == v["attack"].target)),
                        "asr_none": 100 * float(np.mean(none_pred == v["attack"].target)),
                        "triggered_seconds": round(secs, 1)}
            print(json.dumps(row), flush=True)
            record["rows"].append(row)
            record |= provenance(__file__, argv, args.threads)
            atomic_write_text(args.out, json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
