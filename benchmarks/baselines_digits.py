"""SampDetox's table-1 baselines (ZIP, Sancdifi, BDMAE) next to SampDetox at the digits default (16x16, CPU).

A small, measured table on the project's default data (scikit-learn's digits upscaled to 16x16, the shipped 16x16
purifier, a small_cnn victim per attack trained with ``params.victim``), NOT the paper's CIFAR-10 setting: it
shows the baselines run end to end on one engine with their queries and images/s. The CIFAR-10 table is
``benchmarks/sampdetox_eval.py table --defenses ...,zip,sancdifi,bdmae`` (docs/baselines.md).

    nice -n 10 .venv/bin/python benchmarks/baselines_digits.py --n 40 --attacks badnets,blended \\
        --out benchmarks/results/baselines_digits.json

Victims are cached under ``--work`` (resumes); every row records images/s, queries per image and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", default="badnets,blended")
    ap.add_argument("--defenses", default="none,sampdetox,faithful,zip,sancdifi,bdmae")
    ap.add_argument("--n", type=int, default=40, help="clean and triggered test images per attack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/baselines_digits"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--inpaint-check", action="store_true",
                    help="only measure BDMAE's substitute for the MAE: PSNR of masked tokens restored by the purifier")
    ap.add_argument("--throughput", type=int, default=None, metavar="SIDE",
                    help="only time each defense on --n random SIDExSIDE images (shipped purifier of that size, an "
                         "untrained small_cnn as the black box: the cost does not depend on its weights)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.inpaint_check:
        inpaint_check(args)
        return
    if args.throughput:
        throughput(args)
        return

    from detoxops.attacks import poison_datasets, registry
    from detoxops.config import load_params
    from detoxops.data import load_source
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.evaluation import EvalSet, evaluate_defense
    from detoxops.diffusion import default_purifier
    from detoxops.metrics import percent_rates
    from detoxops.models import build_classifier, load_classifier, save_classifier, train_classifier

    params = load_params("params.yaml", args.overrides)
    splits = load_source("digits", params.data)
    train, test = splits["train"], splits["test"]
    purifier = default_purifier("digits")
    rows = []
    started = time.perf_counter()
    for name in [a.strip() for a in args.attacks.split(",") if a.strip()]:
        attack = registry.create(name, target=0, poison_ratio=0.1, seed=args.seed, image_size=train.images.shape[1],
                                 num_classes=train.num_classes)
        p_train, triggered = poison_datasets(attack, train, test)
        folder = args.work / name / "victim"
        if (folder / "model.safetensors").is_file():
            victim = load_classifier(folder)
        else:
            victim = build_classifier(params.victim.arch, train.num_classes, 3, train.images.shape[1],
                                      seed=args.seed, width=params.victim.width)
            train_classifier(victim, p_train, params.victim, attack=attack if attack.kind == "loop" else None,
                             progress=False)
            save_classifier(victim, folder)
        victim.eval()
        data = EvalSet.from_imagesets(test, triggered, attack.target, attack=attack)
        rng = np.random.default_rng(args.seed)
        data = data.subset(np.sort(rng.permutation(len(data.clean_images))[: args.n]),
                           np.sort(rng.permutation(len(data.poisoned_images))[: args.n]))
        for d_name in [d.strip() for d in args.defenses.split(",") if d.strip()]:
            defense = build_defense(d_name, purifier, params.sampdetox, classifier=victim, baselines=params.baselines)
            load_before = os.getloadavg()[0]
            row = percent_rates(evaluate_defense(victim, defense, data, batch_size=params.baselines.batch_size,
                                                 name=d_name))
            row.update(attack=name, load_before=load_before, load_after=os.getloadavg()[0],
                       queries_per_image=getattr(defense, "queries_total", 0) / (2 * args.n))
            rows.append(row)
            print(f"{name:<8} {d_name:<10} CA {row['ca']:5.1f} PA {row['pa']:5.1f} ASR {row['asr']:5.1f} "
                  f"{row['images_per_s']:7.2f} img/s {row['queries_per_image']:6.0f} q/img "
                  f"load {load_before:.1f}->{row['load_after']:.1f}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "command": "python " + shlex.join(sys.argv), "rows": rows, "n_clean": args.n, "n_poisoned": args.n,
                "data": "digits 16x16 (scikit-learn, params.data)", "purifier": "shipped digits-16",
                "victim": f"{params.victim.arch} width {params.victim.width}, {params.victim.epochs} epochs",
                "baselines": params.baselines.model_dump(mode="json"), "machine": "2-core CPU, shared, niced",
                "threads": args.threads, "seconds": time.perf_counter() - started,
            }, indent=2, default=float))


def inpaint_check(args) -> None:
    """Does the purifier's inpainting restore masked tokens from their context (the MAE's role in BDMAE)? PSNR on
    the masked pixels of clean test images for BDMAE's random 75 % token masks, against two context-free fills:
    mid-gray and the image's own mean colour over its visible pixels."""
    from detoxops.config import load_params
    from detoxops.data import load_source, to_tensor
    from detoxops.defenses.bdmae import inpaint, token_to_pixels
    from detoxops.diffusion import default_purifier

    params = load_params("params.yaml", args.overrides)
    test = load_source("digits", params.data)["test"]
    purifier = default_purifier("digits")
    cfg = params.baselines.bdmae
    g = torch.Generator().manual_seed(args.seed)
    x01 = to_tensor(np.asarray(test.images[: args.n]))
    n_tok = cfg.grid * cfg.grid
    perms = torch.rand((len(x01), n_tok), generator=g).argsort(1)[:, : int(n_tok * cfg.mask_ratio)]
    tokens = torch.zeros((len(x01), n_tok)).scatter_(1, perms, 1.0)
    mask = token_to_pixels(tokens, cfg.grid, tuple(x01.shape[-2:])) > 0.5
    t0 = time.perf_counter()
    out = (inpaint(purifier, x01 * 2 - 1, mask, cfg.inpaint_level or purifier.schedule.T, cfg.inpaint_stride, g,
                   cfg.inpaint_mode) + 1) / 2
    secs = time.perf_counter() - t0
    m = mask.expand_as(x01)
    visible_mean = (x01 * ~m).sum((2, 3), keepdim=True) / (~m).sum((2, 3), keepdim=True).clamp_min(1)

    def psnr(a):
        mse = ((a.clamp(0, 1) - x01) ** 2)[m].mean()
        return float(10 * torch.log10(1 / mse))

    result = {"command": "python " + shlex.join(sys.argv), "n": len(x01), "grid": cfg.grid,
              "inpaint_mode": cfg.inpaint_mode,
              "mask_ratio": cfg.mask_ratio, "inpaint_stride": cfg.inpaint_stride,
              "psnr_masked_inpaint": psnr(out), "psnr_masked_gray": psnr(torch.full_like(x01, 0.5)),
              "psnr_masked_visible_mean": psnr(visible_mean.expand_as(x01)),
              "unmasked_unchanged": bool((out[~m] - x01[~m]).abs().max() < 1e-5),
              "seconds": secs, "load": os.getloadavg()[0], "machine": "2-core CPU, shared, niced"}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


def throughput(args) -> None:
    from detoxops.config import load_params
    from detoxops.defenses.catalog import build_defense
    from detoxops.diffusion import default_purifier
    from detoxops.models import build_classifier

    params = load_params("params.yaml", args.overrides)
    side = int(args.throughput)
    purifier = default_purifier(side)
    victim = build_classifier("small_cnn", 10, 3, side, seed=args.seed, width=params.victim.width).eval()
    x = torch.rand((args.n, 3, side, side), generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for name in [d.strip() for d in args.defenses.split(",") if d.strip()]:
        defense = build_defense(name, purifier, params.sampdetox, classifier=victim, baselines=params.baselines)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        with torch.no_grad():
            defense(x)
        secs = time.perf_counter() - t0
        rows.append({"defense": name, "images": args.n, "seconds": secs, "images_per_s": args.n / secs,
                     "queries_per_image": getattr(defense, "queries_total", 0) / args.n,
                     "load_before": load_before, "load_after": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python " + shlex.join(sys.argv), "side": side, "rows": rows,
                                        "purifier": f"shipped {side}x{side}", "threads": args.threads,
                                        "machine": "2-core CPU, shared with training jobs, niced"}, indent=2))


if __name__ == "__main__":
    main()
