"""SampDetox figure 2 at small scale: per attack, train a small CNN victim on poisoned CIFAR-10 training images
(data attacks: the poisoned set; loop attacks: clean batches through ``attack.batch_transform``), then v and η_r
of ``--samples`` random triggered non-target test images (1 CPU thread). Prints one markdown row per attack.

    nice -n 10 .venv/bin/python benchmarks/figure2_small.py badnets blended sig ftrojan bpp wanet refool lf ssba

Defaults reproduce the table in docs/attacks.md ("Figure 2 at small scale"): 500 train / 100 test images per
class, 12 epochs, 200 samples. For victims trained by ``benchmarks/attack_table.py`` use
``detoxops attack visibility --runs DIR --attacks …`` instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_small import DEFAULT_ARCHIVE, read_cifar
from detoxops.attacks import registry
from detoxops.attacks.visibility import figure2_points, summarise, write_rows_csv

ROOT = Path(__file__).resolve().parents[1]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, 10))


def to01(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32)).permute(0, 3, 1, 2) / 255


def train(images: np.ndarray, labels: np.ndarray, epochs: int, attack=None) -> nn.Module:
    model, x, y = net(), to01(images), torch.from_numpy(labels)
    # BackdoorBench's recipe shape (SGD, momentum 0.9, wd 5e-4, cosine), lr raised for 12 epochs
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        model.train()
        for i in range(0, len(x) - 127, 128):  # drop_last, as BackdoorBench
            idx = perm[i : i + 128]
            xb, yb = x[idx], y[idx]
            if attack is not None:
                xb, yb = attack.batch_transform(xb, yb, gen)
            else:  # horizontal flip augmentation for data attacks (loop attacks augment themselves)
                flip = torch.rand(len(xb), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        sched.step()
    return model.eval()


def predict_fn(model: nn.Module):
    def f(x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x01).argmax(1)

    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("attacks", nargs="+")
    ap.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "runs" / "figure2_small_points.csv"), help="per-sample CSV")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    xtr, ytr = read_cifar(args.archive, "train", args.train_per_class)
    xte, yte = read_cifar(args.archive, "test", args.test_per_class)

    t0 = time.perf_counter()
    clean_model = train(xtr, ytr, args.epochs)
    ca_clean = (predict_fn(clean_model)(to01(xte)).numpy() == yte).mean()
    print(f"clean model: CA {ca_clean:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("| attack | CA | ASR | v mean / median | η_r mean / median | hits | inf | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.attacks:
        t = time.perf_counter()
        attack = registry.create(name)
        if name == "lf":
            attack.fit(xtr, ytr, model=clean_model, progress=False)
        elif name == "ssba":
            attack.fit(xtr, ytr, progress=False)
        if attack.kind == "loop":
            model = train(xtr, ytr, args.epochs, attack=attack)
        else:
            px, py, _ = attack.poison_train_arrays(xtr, ytr)
            model = train(px, py, args.epochs)
        f = predict_fn(model)
        ca = (f(to01(xte)).numpy() == yte).mean()
        keep = yte != 0
        asr = (f(to01(attack.apply_trigger(xte[keep]))).numpy() == 0).mean()
        pts = figure2_points(attack, xte, yte, f, samples=args.samples, seed=0)
        rows += pts
        v = np.array([r["v"] for r in pts])
        eta = np.array([r["eta_r"] for r in pts])
        hit = eta > 0  # samples the victim classified as the target (eta_r = 0: the trigger did not work)
        sv, se = summarise(v), summarise(eta[hit])
        print(f"| {name} | {ca:.3f} | {asr:.3f} | {sv['mean']:.4f} / {sv['median']:.4f} | "
              f"{se.get('mean', float('nan')):.3f} / {se.get('median', float('nan')):.3f} | {int(hit.sum())} | "
              f"{int(se['n_inf'])} | {time.perf_counter() - t:.0f} |", flush=True)
    print(f"{len(rows)} points → {write_rows_csv(rows, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
