"""LF and SSBA fit costs on CIFAR-10 (1 CPU thread): the "Fitted attacks" numbers of docs/attacks.md.

    nice -n 10 .venv/bin/python benchmarks/attack_fit_cost.py lf
    nice -n 10 .venv/bin/python benchmarks/attack_fit_cost.py ssba

Defaults: 500 train images per class (5000), 20 test images per class (200), the attacks' default options.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from cifar_small import DEFAULT_ARCHIVE, read_cifar
from detoxops.attacks import registry
from detoxops.attacks.lf import low_frequency_energy
from detoxops.attacks.visibility import perturbation_stats


def to01(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255


def fit_lf(xtr, ytr, xte, yte, options: dict, epochs: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(128, 10))
    x, y = to01(xtr), torch.from_numpy(ytr)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    xt = to01(xte)
    with torch.no_grad():
        acc = (model(xt).argmax(1).numpy() == yte).mean()
    print(f"surrogate: {epochs} epochs on {len(x)} images, {time.perf_counter() - t:.0f} s, clean test acc {acc:.3f}")
    a = registry.create("lf", options=options)
    t = time.perf_counter()
    a.fit(xtr, ytr, model=model, progress=False)
    dt = time.perf_counter() - t
    print(f"lf fit: {dt:.1f} s, report {a.fit_report['passes']} passes, "
          f"final fooling {a.fit_report['fooling_rate']:.3f}")
    p = a.pattern
    print("pattern per-channel max", p.reshape(-1, 3).max(0), "low-freq energy (<4 cyc)",
          round(low_frequency_energy(p, 4), 4))
    keep = yte != 0
    trig = a.apply_trigger(xte[keep])
    with torch.no_grad():
        before = (model(xt[keep]).argmax(1) == 0).float().mean().item()
        after = (model(to01(trig)).argmax(1) == 0).float().mean().item()
    print(f"surrogate predicts target on non-target test images: {before:.3f} clean -> {after:.3f} with pattern")
    print(perturbation_stats(xte, a.apply_trigger(xte)))


def fit_ssba(xtr, ytr, xte, options: dict) -> None:
    a = registry.create("ssba", options=options)
    t = time.perf_counter()
    a.fit(xtr, ytr, progress=False)
    dt = time.perf_counter() - t
    print(f"ssba fit ({json.dumps(options) if options else 'defaults'}, {len(xtr)} train images): {dt:.0f} s, "
          f"{a.fit_report}")
    t = time.perf_counter()
    p = a.apply_trigger(xte)
    de = time.perf_counter() - t
    print(f"encode {len(xte)} images: {de:.2f} s; decoded bit acc poisoned "
          f"{(a.decode_bits(p) == a.fingerprint).mean():.4f} clean {(a.decode_bits(xte) == a.fingerprint).mean():.4f}")
    print(perturbation_stats(xte, p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("attack", choices=["lf", "ssba"])
    ap.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--surrogate-epochs", type=int, default=10, help="LF's clean surrogate (Adam 2e-3)")
    ap.add_argument("--options", default="{}", help="attack options as JSON, e.g. '{\"steps\": 100}'")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    xtr, ytr = read_cifar(args.archive, "train", args.train_per_class)
    xte, yte = read_cifar(args.archive, "test", args.test_per_class)
    options = json.loads(args.options)
    if args.attack == "lf":
        fit_lf(xtr, ytr, xte, yte, options, args.surrogate_epochs)
    else:
        fit_ssba(xtr, ytr, xte, options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
