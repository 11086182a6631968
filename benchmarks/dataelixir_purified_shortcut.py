"""Does a retrained model read "purified" as a class? (issue #21, FTrojan's residual backdoor.)

DataElixir gives purified images to the retraining set; when the images purified a given number of times all carry
one label (``target_rounds`` purifies again exactly the purified images that end with the target label), the
purification's own trace is a feature perfectly tied to that label, and a trigger that resembles the trace would
fire it. This measures it directly: clean test images of every non-target class, purified for 0, 1, ..., R rounds
at DataElixir's setting (T, sampler, stride of ``params.yaml``'s profile at the image size; seeded), and the share
of each that every given model labels as the target:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dataelixir_purified_shortcut.py --seed 0 --per-class 30 \\
        --rounds 2 --model reference=runs/dataelixir_cifar10_fast/seed0/reference \\
        --model retrained=runs/dataelixir_cifar10_fast/seed0/ftrojan/elixir-a34a3fd9fd/retrained \\
        --out benchmarks/results/dataelixir_purified_shortcut_ftrojan_seed0.json

A model that learned the trace labels the target far more often on purified images than on the same images
unpurified, and more after the rounds its training set tied to the target.
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
from dataelixir_cifar10_fast import DEFAULT_ARCHIVE, seed_splits  # noqa: E402
from detoxops.config import load_params  # noqa: E402
from detoxops.data import ImageSet  # noqa: E402
from detoxops.defenses.elixir.candidates import purification_rounds  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402
from detoxops.operations import dataelixir_diffusion, load_chosen_purifier  # noqa: E402


def non_target_sample(test: ImageSet, target: int, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` test images of every class but ``target``, drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(test.labels == c), per_class, replace=False)
             for c in range(test.num_classes) if c != target]
    return np.sort(np.concatenate(picks))


def purified_versions(purifier, images: np.ndarray, cfg, rounds: int, seed: int, batch: int = 64) -> list[np.ndarray]:
    """``[images, after 1 round, ..., after rounds]`` (uint8 HWC), each round chained on the last, as stage 4's
    ``target_rounds`` chains them."""
    gen = torch.Generator(device=purifier.device).manual_seed(seed)
    versions = [images]
    for _ in range(rounds):
        last, out = versions[-1], np.empty_like(images)
        for b in range(0, len(last), batch):
            x01 = torch.from_numpy(np.array(last[b:b + batch])).permute(0, 3, 1, 2).float().div(255)
            y = purification_rounds(purifier, x01, cfg, 1, gen)
            out[b:b + batch] = (y.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        versions.append(out)
    return versions


def target_shares(models: dict, versions: list[np.ndarray], labels: np.ndarray, target: int) -> dict:
    """Per model and number of rounds: the share labelled ``target`` and the accuracy."""
    out = {}
    for name, model in models.items():
        rows = []
        for k, images in enumerate(versions):
            pred = predict(model, images)
            rows.append({"rounds": k, "target_share": float((pred == target).mean()),
                         "accuracy": float((pred == labels).mean())})
        out[name] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(DEFAULT_ARCHIVE))
    ap.add_argument("--seed", type=int, default=0, help="sample and noise seed")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", action="append", required=True, help="name=classifier folder (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml", [], announce=False)
    test = seed_splits(params, args.source, args.seed, train_per_class=1)["test"]
    size = int(test.image_shape[0])
    purifier = load_chosen_purifier(None, dataelixir_diffusion(params, size), size)
    cfg = params.dataelixir.resolved(size)
    idx = non_target_sample(test, args.target, args.per_class, args.seed)
    versions = purified_versions(purifier, np.asarray(test.images)[idx], cfg, args.rounds, args.seed)
    models = {}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        models[name] = load_classifier(folder)
    shares = target_shares(models, versions, np.asarray(test.labels)[idx], args.target)
    for name, rows in shares.items():
        print(name, " ".join(f"{r['rounds']}: {100 * r['target_share']:.1f}% (acc {100 * r['accuracy']:.1f})"
                             for r in rows), flush=True)
    report = {**provenance(__file__, argv, threads=args.threads), "images": len(idx), "target": args.target,
              "dataelixir": cfg.model_dump(mode="json", include={"T", "sampler", "ddim_stride"}),
              "models": dict(m.partition("=")[::2] for m in args.model), "shares": shares}
    atomic_write_text(args.out, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
