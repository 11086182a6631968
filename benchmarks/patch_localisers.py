"""Which map localises a patch trigger? The restoration-difference maps of SampDetox vs the context map (issue #20).

No victim is needed: the trigger is applied to clean CIFAR-10 validation images by the attack itself and the
ground truth is its ``trigger_mask``. For every map it reports

* pixel AUC (trigger pixels vs the other pixels of the triggered images, pooled),
* the share of trigger pixels and of clean pixels above a threshold set at a 1 % clean-pixel flag rate (the
  threshold is taken on the first half of the clean images, the rates on the second half),
* the gate: ROC AUC of the map's peak, clean vs triggered images, and the triggered rate above the clean peaks'
  95 % quantile,
* top-k: how often the k highest 5×5 squares (non-maximum suppression) cover the whole trigger.

    python benchmarks/patch_localisers.py --n 100 --attacks badnets,badnets_random \
        --out benchmarks/results/patch_localisers.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detoxops.attacks import registry  # noqa: E402
from detoxops.config import PatchRepairConfig  # noqa: E402
from detoxops.data import to_tensor  # noqa: E402
from detoxops.defenses.map_quality import roc_auc  # noqa: E402
from detoxops.defenses.patch_repair import PatchRepair, box_mean  # noqa: E402
from detoxops.diffusion import denoise, load_purifier  # noqa: E402
from patch_repair_eval import SHIPPED_PURIFIER, clean_test  # noqa: E402
from sampdetox_eval import split_indices  # noqa: E402


def top_squares(m: torch.Tensor, k: int, r: int = 2) -> torch.Tensor:
    """Union of the k highest (2r+1)² squares, non-maximum suppressed, (B, H, W) bool."""
    b, _, h, w = m.shape
    m = m[:, 0].clone()
    out = torch.zeros(b, h, w, dtype=torch.bool)
    ar = torch.arange(h)
    def near(r0: torch.Tensor, c0: torch.Tensor, d: int) -> torch.Tensor:
        return ((ar[None] - r0[:, None]).abs() <= d)[:, :, None] & ((ar[None] - c0[:, None]).abs() <= d)[:, None, :]

    for _ in range(k):
        idx = m.flatten(1).argmax(1)
        r0, c0 = idx // w, idx % w
        out |= near(r0, c0, r)
        m[near(r0, c0, 2 * r)] = -1e9
    return out


def quality(clean_maps: torch.Tensor, trig_maps: torch.Tensor, mask: np.ndarray) -> dict:
    n = len(clean_maps)
    cal, ev = clean_maps[: n // 2], clean_maps[n // 2 :]
    thr = float(torch.quantile(cal.flatten(), 0.99))
    tm = torch.from_numpy(mask)
    sc, sp = clean_maps.flatten(1).amax(1), trig_maps.flatten(1).amax(1)
    gthr = float(torch.quantile(sc, 0.95))
    out = {
        "pixel_auc": float(roc_auc(trig_maps[:, 0].numpy(), mask, per_image=False)),
        "trigger_pixels_flagged": float((trig_maps[:, 0][tm] > thr).float().mean()),
        "clean_pixels_flagged": float((ev > thr).float().mean()),
        "gate_auc": float(roc_auc(np.r_[sc.numpy(), sp.numpy()][None],
                                  np.r_[np.zeros(len(sc)), np.ones(len(sp))].astype(bool)[None])[0]),
        "gate_tpr_at_clean_95q": float((sp > gthr).float().mean()),
    }
    size = tm.flatten(1).sum(1).clamp_min(1)
    for k in (1, 3, 5):
        cov = (top_squares(trig_maps, k) & tm).flatten(1).sum(1) / size
        out[f"top{k}_covers_trigger"] = float((cov >= 0.999).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--purifier", type=Path, default=SHIPPED_PURIFIER)
    ap.add_argument("--attacks", default="badnets,badnets_random")
    ap.add_argument("--n", type=int, default=100, help="clean and triggered images each (validation half)")
    ap.add_argument("--diff-levels", default="60,120,300")
    ap.add_argument("--context", default="aligned:50,all:50", help="offsets:stride pairs of context maps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    purifier = load_purifier(args.purifier)
    clean = clean_test(args.data)
    idx = split_indices(clean, "val", 2 * args.n, seed=0)
    calib_u8, source_u8 = clean.images[idx[::2]][: args.n], clean.images[idx[1::2]][: args.n]
    record = {"command": shlex.join(["python", *sys.argv]), "n": args.n, "load_avg_start": list(os.getloadavg()),
              "threads": args.threads, "maps": {}}

    def diff_map(x: torch.Tensor, t: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(t)
        outs = []
        for xb in x.split(50):
            xt = purifier.schedule.q_sample(xb, t, torch.randn(xb.shape, generator=g))
            outs.append(box_mean((xb - denoise(purifier, xt, t, mode="ddim", stride=20, generator=g)).abs().mean(1, True) / 2, 3))
        return torch.cat(outs)

    def context_map(x: torch.Tensor, offsets: str, stride: int) -> torch.Tensor:
        rep = PatchRepair(purifier, PatchRepairConfig(offsets=offsets, stride=stride))
        return torch.cat([rep.context_map(xb, torch.Generator().manual_seed(i)) for i, xb in enumerate(x.split(25))])

    makers = {f"diff@{t}": (lambda x, t=int(t): diff_map(x, t)) for t in args.diff_levels.split(",") if t}
    for spec in filter(None, args.context.split(",")):
        offsets, stride = spec.split(":")
        makers[f"context[{offsets}, stride {stride}]"] = lambda x, o=offsets, s=int(stride): context_map(x, o, s)
    xc = to_tensor(calib_u8) * 2 - 1
    for name, make in makers.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            clean_maps = make(xc)
            rows = {}
            for attack_name in args.attacks.split(","):
                attack = registry.create(attack_name, image_size=clean.images.shape[1])
                trig = attack.apply_trigger(np.asarray(source_u8))
                mask = attack.trigger_mask(np.asarray(source_u8))
                rows[attack_name] = quality(clean_maps, make(to_tensor(trig) * 2 - 1), mask)
        record["maps"][name] = {"seconds": round(time.perf_counter() - t0, 1), **rows}
        print(name, json.dumps(record["maps"][name]), flush=True)
    record["load_avg_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
