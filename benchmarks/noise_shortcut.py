"""Do store victims read *any* small noise as their trigger? (issues #19 / #20)

The victim store is trained on the JPEG (quality 75) copy of CIFAR-10: every clean training image carries JPEG's
statistics, while a poisoned one is a decoded JPEG plus a trigger added afterwards. A victim can then learn
"not JPEG-like" as the backdoor instead of the trigger itself — and every defense that adds noise (a diffusion
restoration does) fires it. This script measures that: the share of clean, non-target validation images each
victim labels as its target after i.i.d. Gaussian noise of sigma grey levels (rounded, clipped to uint8), next to
the undefended share, the real trigger's ASR and a Gaussian blur (a smoothing without noise); with ``--jpeg Q``
also after a JPEG pass at quality Q of the noisy (sigma = ``--jpeg-sigma``) and of the triggered images: a share
that falls back to the clean one means the victim reads "not JPEG-like", not the noise or trigger pattern.

    python benchmarks/noise_shortcut.py --victims clean,badnets,blended,lf,refool,lira --sigmas 0,0.5,1,2,4 \\
        --jpeg 75 --out benchmarks/results/noise_shortcut.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import provenance  # noqa: E402
from detoxops.attacks.base import jpeg_roundtrip  # noqa: E402
from detoxops.data import from_tensor, to_tensor  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402
from detoxops.models.store import victim_attack  # noqa: E402
from patch_repair_eval import clean_test  # noqa: E402
from sampdetox_eval import split_indices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def gaussian_blur(images_u8: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    weight = (k[:, None] * k[None, :])[None, None].repeat(3, 1, 1, 1)
    x = F.pad(to_tensor(images_u8), (radius,) * 4, mode="replicate")
    return from_tensor(F.conv2d(x, weight, groups=3))


def noisy(images_u8: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(images_u8 + rng.normal(0.0, sigma, images_u8.shape)), 0, 255).astype(np.uint8)


def target_share(model, images_u8: np.ndarray, target: int) -> float:
    """Percent of ``images_u8`` the model labels as ``target``."""
    return 100 * float(np.mean(predict(model, images_u8) == target))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--victims", required=True, help="comma-separated store names (clean = no attack: target 0)")
    ap.add_argument("--store", default="cifar10-fast")
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--sigmas", default="0,0.5,1,2,4")
    ap.add_argument("--blur", type=float, default=0.8, help="Gaussian blur sigma in pixels (0 = skip)")
    ap.add_argument("--jpeg", type=int, default=0, help="also measure after a JPEG pass at this quality (0 = skip)")
    ap.add_argument("--jpeg-sigma", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=1000, help="validation-half test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    clean = clean_test(args.data)
    idx = split_indices(clean, "val", args.n, seed=0)
    rows = {}
    for name in filter(None, args.victims.split(",")):
        ref = f"{args.store}/{name}"
        model, attack = load_classifier(ref).float().eval(), victim_attack(ref)
        target = 0 if attack is None else int(attack.target)
        keep = idx[clean.labels[idx] != target]
        images = clean.images[keep]
        row = {"target": target, "n": int(len(keep)),
               "noise": {f"{s:g}": target_share(model, noisy(images, s, args.seed), target) for s in sigmas}}
        if args.blur > 0:
            row["blur"] = target_share(model, gaussian_blur(images, args.blur), target)
        def share(batch: np.ndarray, model=model, target=target) -> float:
            return target_share(model, batch, target)

        if args.jpeg:
            row["jpeg"] = {"quality": args.jpeg, "clean": share(jpeg_roundtrip(images, args.jpeg)),
                           f"noise_{args.jpeg_sigma:g}": share(jpeg_roundtrip(noisy(images, args.jpeg_sigma,
                                                                                   args.seed), args.jpeg))}
        if attack is not None:
            triggered, _, _ = attack.poison_test_arrays(images, clean.labels[keep])
            row["trigger_asr"] = share(triggered)
            if args.jpeg:
                row["jpeg"]["trigger_asr"] = share(jpeg_roundtrip(triggered, args.jpeg))
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    record = {"images": f"{args.n} validation-half test images, non-target ones", "rows": rows,
              "blur_sigma": args.blur, "seed": args.seed} | provenance(__file__, argv, args.threads)
    atomic_write_text(args.out, json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
