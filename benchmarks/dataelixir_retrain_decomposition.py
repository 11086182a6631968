"""Where a DataElixir entry's retrained accuracy goes: its images or its labels (issue #21).

A sanitised set differs from the unpoisoned one in two ways: purified images (every sample of P, and what the
``purify`` mode adds) and wrong labels (false positives, and poison given a label other than its own). This
retrains the entry's model on sets that keep one of the two and undo the other, with the benchmark's victim recipe
and seed, so the retrained ACC gap to the unpoisoned reference splits into what each costs:

* ``true_labels``: the sanitised images with every sample's true (pre-attack) label: what the image changes cost
  (plus the poisoned images the purifier left as they were, now with their true labels);
* ``input_images``: the input images with the sanitised labels: what the label errors cost (the poison keeps its
  trigger here, so this variant's ASR says nothing about the defense);
* ``drop_relabelled``: the sanitised set without the samples whose label DataElixir changed: what dropping instead
  of relabelling would give;
* ``drop_target_poison`` (an oracle): the sanitised set without the truly poisoned samples that still carry a
  target label: what the poison left under the target label costs in ASR (what is left of their trigger after
  purification, when stage 4 purified them);
* ``drop_poison`` (an oracle): the sanitised set without every truly poisoned sample, whatever its label now: the
  ASR a retraining reaches when no poisoned image is left at all (what the rest of the set teaches);
* ``as_sanitised``: the sanitised set itself, for ``--train-seed``.

``--train-seed N`` trains the variants with victim seed ``N`` instead of the benchmark's (= the data seed), and the
unpoisoned reference again with it (once per seed folder, ``reference-t<N>/``): how much one retraining varies.
With ``--variants as_sanitised`` and two or three training seeds, the row's ``gap`` holds the retrained ACC minus
the unpoisoned ACC per training seed (the benchmark's own pair included), paired by seed, with their mean and range:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dataelixir_retrain_decomposition.py --seed 0 \
        --entries blended/elixir-a34a3fd9fd --variants as_sanitised --train-seed 101 \
        --out benchmarks/results/dataelixir_retrain_spread_seed0.json

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dataelixir_retrain_decomposition.py --seed 1 \
        --entries wanet/elixir-4871abb707 --out benchmarks/results/dataelixir_retrain_decomposition_seed1.json

Entries are ``<attack>/<elixir folder>`` of ``benchmarks/dataelixir_cifar10_fast.py``'s work folder; each variant's
model is kept under ``<elixir folder>/decomposition/<variant>/`` (a finished one is loaded, an interrupted one
resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from detoxops.config import load_params
from detoxops.data import ImageSet
from detoxops.fileio import atomic_write_text
from detoxops.operations import train_victim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import dataelixir_cifar10_fast as fast  # noqa: E402

VARIANTS = ("true_labels", "input_images", "drop_relabelled", "drop_target_poison", "drop_poison", "as_sanitised")


def _truth(train: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """Every input sample's true (pre-attack) label and whether the attack poisoned it."""
    true = train.labels if train.original_labels is None else train.original_labels
    poisoned = np.zeros(len(train), bool) if train.poisoned is None else np.asarray(train.poisoned, bool)
    return np.asarray(true), poisoned


def variants(train: ImageSet, sanitised: ImageSet, targets: list[int]) -> dict[str, ImageSet]:
    """The retraining sets of the module docstring, from the input set, DataElixir's output and its targets."""
    if len(train) != len(sanitised):
        raise ValueError(f"the sanitised set has {len(sanitised)} samples, the input {len(train)}")
    true, poisoned = _truth(train)
    kept = np.flatnonzero(sanitised.labels == train.labels)
    target_poison = poisoned & np.isin(sanitised.labels, targets)
    return {
        "true_labels": sanitised.replace(labels=true.copy()),
        "input_images": train.replace(labels=sanitised.labels.copy()),
        "drop_relabelled": sanitised.subset(kept),
        "drop_target_poison": sanitised.subset(np.flatnonzero(~target_poison)),
        "drop_poison": sanitised.subset(np.flatnonzero(~poisoned)),
        "as_sanitised": sanitised,
    }


def gap(row: dict) -> dict | None:
    """Retrained (``as_sanitised``) minus unpoisoned ACC per training seed, the benchmark's own pair included
    (key ``"benchmark"``), with mean, min and max; ``None`` without another training seed's pair."""
    per_seed = {"benchmark": row["as_sanitised"]["acc"] - row["reference"]["acc"]}
    for seed, runs in sorted(row.get("train_seeds", {}).items()):
        if "as_sanitised" in runs["variants"]:
            per_seed[seed] = runs["variants"]["as_sanitised"]["acc"] - runs["reference"]["acc"]
    if len(per_seed) < 2:
        return None
    values = list(per_seed.values())
    return {"per_seed": per_seed, "mean": float(np.mean(values)), "min": min(values), "max": max(values)}


def differences(train: ImageSet, sanitised: ImageSet) -> dict[str, int]:
    """How the sanitised set differs from the unpoisoned one: changed images, wrong labels (and of which samples)."""
    true, poisoned = _truth(train)
    changed = (sanitised.images != train.images).reshape(len(train), -1).any(axis=1)
    wrong = sanitised.labels != true
    return {"images_changed": int(changed.sum()), "wrong_labels": int(wrong.sum()),
            "wrong_labels_clean": int((wrong & ~poisoned).sum()), "wrong_labels_poisoned": int((wrong & poisoned).sum()),
            "relabelled": int((sanitised.labels != train.labels).sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(fast.DEFAULT_ARCHIVE))
    ap.add_argument("--work", default=str(ROOT / "runs" / "dataelixir_cifar10_fast"))
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--entries", nargs="+", required=True, help="<attack>/<elixir folder> of the seed's work folder")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--train-seed", type=int, default=None,
                    help="victim seed of the retrainings (default: the benchmark's, the data seed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_params(ROOT / "params.yaml", [], announce=False)
    splits = fast.seed_splits(base, args.source, args.seed)
    seed_dir = Path(args.work) / f"seed{args.seed}"
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    commands = report.setdefault("commands", [report.pop("command")] if "command" in report else [])
    if (command := shlex.join(["python", *sys.argv])) not in commands:
        commands.append(command)
    report["seed"] = args.seed
    entries = report.setdefault("entries", {})
    train_seed = args.seed if args.train_seed is None else args.train_seed
    suffix = "" if train_seed == args.seed else f"-t{train_seed}"
    for name in args.entries:
        attack, folder = name.split("/")
        elixir_dir = seed_dir / attack / folder
        if not (elixir_dir / "result.json").is_file():
            raise SystemExit(f"{elixir_dir}: no finished entry (result.json) there")
        params = fast.seed_params(base, args.seed, attack)
        params = params.model_copy(update={"victim": params.victim.model_copy(update={"seed": train_seed})})
        train = fast._entry_train(attack, seed_dir / attack, splits)
        triggered = None if attack == "clean" else ImageSet.load(seed_dir / attack / "poisoned" / "test")
        target = params.attack.target if triggered is None else int(json.loads(
            (seed_dir / attack / "poisoned" / "attack.json").read_text()).get("target", params.attack.target))
        sanitised = ImageSet.load(elixir_dir / "purified")
        result = json.loads((elixir_dir / "result.json").read_text())
        row = entries.setdefault(name, {})
        row |= {"differences": differences(train, sanitised), "reference": result["reference"],
                "as_sanitised": result["retrained"]}
        runs = row.setdefault("variants", {})
        if suffix:  # another training seed: its own unpoisoned reference, its own variants
            stages = fast.Stages()
            ref_dir = seed_dir / f"reference{suffix}"
            reference = fast.trained(ref_dir, partial(
                train_victim, splits["train"], params.victim, ref_dir, clean_test=splits["test"],
                checkpoint_dir=seed_dir / f"reference{suffix}.ckpt",
                record={"seed": train_seed, "data_seed": args.seed, "benchmark": "dataelixir_cifar10_fast reference"},
                progress=False),
                stages, "reference_train")
            by_seed = row.setdefault("train_seeds", {}).setdefault(str(train_seed), {"variants": {}})
            by_seed["reference"] = {**fast.scores(reference, splits["test"], triggered, target),
                                    "seconds": stages.seconds.get("reference_train")}
            runs = by_seed["variants"]
        targets = json.loads((elixir_dir / "sanitize.json").read_text())["target_labels"]
        for variant, data in variants(train, sanitised, targets).items():
            if variant not in args.variants or (variant == "as_sanitised" and not suffix):
                continue  # as_sanitised with the benchmark's seed is the benchmark's own retraining
            out_dir = elixir_dir / "decomposition" / (variant + suffix)
            stages = fast.Stages()
            model = fast.trained(out_dir, partial(
                train_victim, data, params.victim, out_dir, clean_test=splits["test"],
                checkpoint_dir=out_dir.with_name(variant + suffix + ".ckpt"),
                record={"seed": train_seed, "data_seed": args.seed, "attack": attack, "decomposition": variant},
                progress=False), stages, "retrain")
            runs[variant] = {"n": len(data), **fast.scores(model, splits["test"], triggered, target),
                             "seconds": stages.seconds.get("retrain")}
            print(name, variant + suffix, json.dumps(runs[variant]), flush=True)
        if (spread := gap(row)) is not None:
            row["gap"] = spread
        atomic_write_text(args.out, json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
