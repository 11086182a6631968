"""SampDetox figure 2 at small scale: per attack, train a small CNN victim on 5000 poisoned CIFAR-10 training
images (data attacks: the poisoned set; loop attacks: clean batches through attack.batch_transform), then v and
eta_r of 200 triggered non-target test images (1 CPU thread)."""
import sys, time, csv
sys.path.insert(0, "tests/attacks")
from pathlib import Path
import numpy as np, torch
from torch import nn
torch.set_num_threads(1)
from conftest import _read_cifar
from detoxops.attacks import registry
from detoxops.attacks.visibility import figure2_points, summarise

arc = Path("../shared/datasets/cifar10-jpeg.tar.gz")
xtr, ytr = _read_cifar(arc, "train", 500)     # 5000 training images
xte, yte = _read_cifar(arc, "test", 100)      # 1000 test images
EPOCHS = 12

def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, 10))

def to01(a):
    return torch.from_numpy(a.astype(np.float32)).permute(0, 3, 1, 2) / 255

def train(images, labels, attack=None):
    model, X, Y = net(), to01(images), torch.from_numpy(labels)
    # BackdoorBench's recipe shape (SGD, momentum 0.9, wd 5e-4, cosine), lr raised for 12 epochs
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    gen = torch.Generator().manual_seed(0)
    for ep in range(EPOCHS):
        perm = torch.randperm(len(X), generator=gen)
        model.train()
        for i in range(0, len(X) - 127, 128):   # drop_last, as BackdoorBench
            idx = perm[i:i + 128]; xb, yb = X[idx], Y[idx]
            if attack is not None:
                xb, yb = attack.batch_transform(xb, yb, gen)
            else:  # horizontal flip augmentation for data attacks (loop attacks augment themselves)
                flip = torch.rand(len(xb), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            opt.zero_grad(); nn.functional.cross_entropy(model(xb), yb).backward(); opt.step()
        sched.step()
    return model.eval()

def predict_fn(model):
    def f(x01):
        with torch.no_grad():
            return model(x01).argmax(1)
    return f

t0 = time.perf_counter()
clean_model = train(xtr, ytr)
ca_clean = (predict_fn(clean_model)(to01(xte)).numpy() == yte).mean()
print(f"clean model: CA {ca_clean:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
rows, table = [], []
for name in sys.argv[1:]:
    t = time.perf_counter()
    attack = registry.create(name)
    if name == "lf":
        attack.fit(xtr, ytr, model=clean_model, progress=False)
    elif name == "ssba":
        attack.fit(xtr, ytr, progress=False)
    if attack.kind == "loop":
        model = train(xtr, ytr, attack=attack)
    else:
        px, py, _ = attack.poison_train_arrays(xtr, ytr)
        model = train(px, py)
    f = predict_fn(model)
    ca = (f(to01(xte)).numpy() == yte).mean()
    keep = yte != 0
    asr = (f(to01(attack.apply_trigger(xte[keep]))).numpy() == 0).mean()
    pts = figure2_points(attack, xte, yte, f, samples=200, seed=0)
    rows += pts
    v = np.array([r["v"] for r in pts]); eta = np.array([r["eta_r"] for r in pts])
    hit = eta > 0   # samples the victim classified as the target (eta_r = 0: the trigger did not work)
    sv, se = summarise(v), summarise(eta[hit])
    line = (f"| {name} | {ca:.3f} | {asr:.3f} | {sv['mean']:.4f} / {sv['median']:.4f} | "
            f"{se.get('mean', float('nan')):.3f} / {se.get('median', float('nan')):.3f} | {int(hit.sum())} | "
            f"{int(se['n_inf'])} | {time.perf_counter() - t:.0f} |")
    print(line, flush=True)
with open("/tmp/fig2_points.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=["attack", "index", "v", "eta_r"]); w.writeheader(); w.writerows(rows)
