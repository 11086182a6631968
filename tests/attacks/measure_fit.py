"""LF and SSBA fit costs on CIFAR-10 (1 CPU thread)."""
import sys, time
sys.path.insert(0, "tests/attacks")
from pathlib import Path
import numpy as np, torch
from torch import nn
torch.set_num_threads(1)
from conftest import _read_cifar
from detoxops.attacks import registry
from detoxops.attacks.lf import low_frequency_energy
from detoxops.attacks.visibility import perturbation_stats
arc = Path("../shared/datasets/cifar10-jpeg.tar.gz")
xtr, ytr = _read_cifar(arc, "train", 500)     # 5000 training images
xte, yte = _read_cifar(arc, "test", 20)       # 200 test images
which = sys.argv[1]
if which == "lf":
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(128, 10))
    X = torch.from_numpy(xtr).permute(0, 3, 1, 2).float() / 255; Y = torch.from_numpy(ytr)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t = time.perf_counter()
    for ep in range(10):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 128):
            idx = perm[i:i+128]; opt.zero_grad(); nn.functional.cross_entropy(model(X[idx]), Y[idx]).backward(); opt.step()
    model.eval()
    Xt = torch.from_numpy(xte).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(): acc = (model(Xt).argmax(1).numpy() == yte).mean()
    print(f"surrogate: 10 epochs on 5000 images, {time.perf_counter()-t:.0f} s, clean test acc {acc:.3f}")
    a = registry.create("lf")
    t = time.perf_counter(); a.fit(xtr, ytr, model=model, progress=False); dt = time.perf_counter() - t
    print(f"lf fit: {dt:.1f} s, report {a.fit_report['passes']} passes, final fooling {a.fit_report['fooling_rate']:.3f}")
    p = a.pattern
    print("pattern per-channel max", p.reshape(-1, 3).max(0), "low-freq energy (<4 cyc)", round(low_frequency_energy(p, 4), 4))
    keep = yte != 0
    trig = a.apply_trigger(xte[keep])
    with torch.no_grad():
        before = (model(Xt[keep]).argmax(1) == 0).float().mean().item()
        after = (model(torch.from_numpy(trig).permute(0, 3, 1, 2).float() / 255).argmax(1) == 0).float().mean().item()
    print(f"surrogate predicts target on non-target test images: {before:.3f} clean -> {after:.3f} with pattern")
    s = perturbation_stats(xte, a.apply_trigger(xte)); print(s)
else:
    a = registry.create("ssba")
    t = time.perf_counter(); a.fit(xtr, ytr, progress=False); dt = time.perf_counter() - t
    print(f"ssba fit (defaults, 5000 train images): {dt:.0f} s, {a.fit_report}")
    t = time.perf_counter(); p = a.apply_trigger(xte); de = time.perf_counter() - t
    print(f"encode 200 images: {de:.2f} s; decoded bit acc poisoned {(a.decode_bits(p)==a.fingerprint).mean():.4f} clean {(a.decode_bits(xte)==a.fingerprint).mean():.4f}")
    print(perturbation_stats(xte, p))
