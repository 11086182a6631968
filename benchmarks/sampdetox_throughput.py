"""Throughput of SampDetox: the batched implementation vs a per-sample, per-pixel-loop one, vs the classifier.

The per-sample reference below is the same Algorithm 1 written the way the public SampDetox code is
structured: one image at a time, skimage SSIM on numpy, Python loops over every pixel for the stage-2 noise
and for the per-pixel update rule at every denoising step (one host sync per pixel per step). It lives here,
not in the package, because it exists only to be measured against.

Same purifier, same classifier, same inputs, same thread count; reported as images/s and ratios, with the
machine. Usage (2-core CPU, no GPU):

    nice -n 10 .venv/bin/python benchmarks/sampdetox_throughput.py --threads 2 \
        --purifier runs/shared/purifier_cifar10/<checkpoint> --n 64 --n-reference 2 \
        --out benchmarks/results/sampdetox_throughput.json

Without ``--purifier`` an untrained UNet of ``params.yaml``'s ``diffusion.unet`` shape (at 32 px) is used:
throughput does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity


# ------------------------------------------------------------------------------------ the slow reference
def _abar(schedule, t: int) -> float:
    """abar at level t, read through the schedule's own q_sample so the convention is the package's."""
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    return float(schedule.q_sample(one, int(t), torch.zeros_like(one))) ** 2


class PerSampleSampDetox:
    """Algorithm 1, DDPM, one image and one pixel at a time (faithful setting: PixelSSIM, min-max, soft)."""

    def __init__(self, purifier, t1: int = 20, t2: int = 120, window: int = 7, seed: int = 0):
        self.purifier, self.t1, self.t2, self.window = purifier, t1, t2, window
        self.rng = torch.Generator().manual_seed(seed)
        T = max(t1, t2)
        self.abar = [1.0] + [_abar(purifier.schedule, t) for t in range(1, T + 1)]

    def _eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.no_grad():
            return self.purifier(x, torch.tensor([t], dtype=torch.long))

    def _step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Equation 5 for the whole image (the pixel loop decides which values are kept)."""
        abar_t, abar_prev = self.abar[t], self.abar[t - 1]
        alpha_t = abar_t / abar_prev
        beta_t = 1 - alpha_t
        eps = self._eps(x, t)
        mean = (x - beta_t / (1 - abar_t) ** 0.5 * eps) / alpha_t**0.5
        if t > 1:
            sigma = ((1 - abar_prev) / (1 - abar_t) * beta_t) ** 0.5
            mean = mean + sigma * torch.randn(x.shape, generator=self.rng)
        return mean

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        outs = []
        for img in x01:  # one image at a time
            x0 = img[None] * 2 - 1
            # stage 1, lines 1-6
            x = self.abar[self.t1] ** 0.5 * x0 + (1 - self.abar[self.t1]) ** 0.5 * torch.randn(
                x0.shape, generator=self.rng
            )
            for t in range(self.t1, 0, -1):
                x = self._step(x, t)
            x_hat = x
            # line 7: skimage SSIM on numpy, per image
            a = ((x0[0] + 1) / 2).permute(1, 2, 0).numpy().astype(np.float64)
            b = ((x_hat[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy().astype(np.float64)
            _, smap = structural_similarity(
                a, b, win_size=self.window, data_range=1.0, channel_axis=2, full=True
            )
            smap = smap.mean(axis=2)
            smap = (smap - smap.min()) / max(smap.max() - smap.min(), 1e-12)
            h, w = smap.shape
            m = np.rint(self.t2 * (1 - smap)).astype(int)
            # lines 8-11: per-pixel noise, a Python loop over pixels
            x = x_hat.clone()
            for i in range(h):
                for j in range(w):
                    if m[i, j] > 0:
                        ab = self.abar[m[i, j]]
                        z = torch.randn(x.shape[1], generator=self.rng)
                        x[0, :, i, j] = ab**0.5 * x_hat[0, :, i, j] + (1 - ab) ** 0.5 * z
            # lines 12-21: every step updates only pixels whose level is above it, pixel by pixel
            m_t = torch.from_numpy(m)
            for t in range(int(m.max()), 0, -1):
                updated = self._step(x, t)
                for i in range(h):
                    for j in range(w):
                        if m_t[i, j].item() >= t:
                            x[0, :, i, j] = updated[0, :, i, j]
            outs.append(((x[0] + 1) / 2).clamp(0, 1))
        return torch.stack(outs)


# ------------------------------------------------------------------------------------------ measuring
def _timed(fn, *args, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    return (time.perf_counter() - start) / repeat


def _machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--purifier", type=Path, default=None)
    ap.add_argument("--victim", type=Path, default=None, help="classifier (default: untrained small_cnn)")
    ap.add_argument("--n", type=int, default=64, help="images for the batched implementation")
    ap.add_argument("--n-reference", type=int, default=2, help="images for the per-sample reference")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from detoxops.config import SampDetoxConfig, load_params
    from detoxops.defenses.sampdetox import SampDetox
    from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, load_purifier

    params = load_params("params.yaml") if Path("params.yaml").exists() else load_params(None)
    if args.purifier is not None:
        purifier = load_purifier(args.purifier)
    else:
        unet_cfg = params.diffusion.unet.model_copy(update={"sample_size": args.size})
        purifier = Purifier(build_unet(unet_cfg), NoiseSchedule.from_config(params.diffusion.schedule))
    if args.victim is not None:
        from detoxops.models import load_classifier

        classifier = load_classifier(args.victim)
    else:
        from detoxops.models import build_classifier

        classifier = build_classifier("small_cnn", 10, 3, args.size)
    classifier.eval()

    x = torch.rand(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows: dict[str, dict] = {}

    def record(name: str, seconds: float, n: int) -> None:
        rows[name] = {"seconds": seconds, "images": n, "images_per_s": n / seconds}
        print(f"{name:<34}{n:>6} images {seconds:9.2f} s {n / seconds:10.2f} images/s", flush=True)

    with torch.no_grad():
        classifier(x[:8])  # warm-up
        record("classifier", _timed(lambda: classifier(x), repeat=5), args.n)
        for profile in ("faithful", "robust"):
            for sampler in ("ddpm", "ddim"):
                cfg = SampDetoxConfig(profile=profile, sampler=sampler, batch_size=args.n)
                sd = SampDetox(purifier, cfg)
                sd(x[:2])  # warm-up
                record(f"sampdetox_{profile}_{sampler}", _timed(sd, x), args.n)
                if profile == "faithful":
                    pipeline = lambda xx, sd=sd: classifier(sd(xx).images)  # noqa: E731
                    record(f"sampdetox_{profile}_{sampler}+classifier", _timed(pipeline, x), args.n)
        ref = PerSampleSampDetox(purifier)
        xr = x[: args.n_reference]
        record("per_sample_reference_ddpm", _timed(ref, xr), len(xr))

    ref_ips = rows["per_sample_reference_ddpm"]["images_per_s"]
    result = {
        "benchmark": "sampdetox_throughput",
        "command": "benchmarks/sampdetox_throughput.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"
        ),
        "machine": _machine(),
        "purifier": str(args.purifier) if args.purifier else "untrained UNet (params.yaml diffusion.unet)",
        "rows": rows,
        "ratios": {
            "faithful_ddpm_vs_per_sample_ddpm": rows["sampdetox_faithful_ddpm"]["images_per_s"] / ref_ips,
            "faithful_ddim_vs_per_sample_ddpm": rows["sampdetox_faithful_ddim"]["images_per_s"] / ref_ips,
            "classifier_vs_faithful_ddpm": rows["classifier"]["images_per_s"]
            / rows["sampdetox_faithful_ddpm"]["images_per_s"],
            "classifier_vs_faithful_ddim": rows["classifier"]["images_per_s"]
            / rows["sampdetox_faithful_ddim"]["images_per_s"],
        },
    }
    for k, v in result["ratios"].items():
        print(f"{k:<40}{v:10.1f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
