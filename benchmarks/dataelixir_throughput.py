"""Throughput of DataElixir's candidate-set construction: batched vs one image at a time, DDPM vs DDIM, and the
end-to-end sanitisation time per 1,000 images.

Candidate-set construction (``detoxops.defenses.elixir.candidates.build_candidates``) is timed on the same
purifier, victim, images and thread count at batch size ``--batch`` (≥ 256) and at batch size 1 (``--n-single``
images, one call each). End-to-end: ``DataElixir.sanitize`` on ``--n-e2e`` images, scaled linearly to 1,000
(the work is per image; say so when quoting it). The reduced setting (T, rounds, keep_last) is recorded in the
output; the paper setting costs T · n = 750 UNet passes per image with DDPM, and the JSON reports the measured
UNet-pass rate so the paper-setting time can be computed from it.

    nice -n 10 .venv/bin/python benchmarks/dataelixir_throughput.py --threads 2 \
        --purifier runs/shared/purifier_cifar10 --out benchmarks/results/dataelixir_throughput_cpu.json

Without ``--purifier`` an untrained UNet of ``params.yaml``'s ``diffusion.unet`` shape at 32 px is used
(``--channels 16 32`` for a tiny one): throughput does not depend on the weights. The batched/single ratio
depends on the net: per-call overhead dominates a single image, compute dominates a batch, so the smaller the
UNet the larger the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from detoxops.config import DataElixirConfig, ScheduleConfig, UNetConfig, VictimConfig, load_params
from detoxops.data import ImageSet
from detoxops.defenses.dataelixir import DataElixir
from detoxops.defenses.elixir.candidates import build_candidates
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, load_purifier
from detoxops.diffusion.unet import count_params
from detoxops.models import build_classifier


def _purifier(path: str | None, image_size: int, channels: list[int] | None) -> Purifier:
    if path:
        return load_purifier(path)
    unet_cfg = load_params("params.yaml").diffusion.unet.model_copy(update={"sample_size": image_size})
    if channels:
        unet_cfg = unet_cfg.model_copy(update={"block_out_channels": channels})
    return Purifier(build_unet(UNetConfig(**unet_cfg.model_dump())), NoiseSchedule.from_config(ScheduleConfig()))


def _time_candidates(purifier, victim, x01: torch.Tensor, cfg: DataElixirConfig, batch: int) -> float:
    """Seconds to build the candidate sets of all of ``x01`` in chunks of ``batch``."""
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for b in range(0, len(x01), batch):
        build_candidates(purifier, victim, x01[b : b + batch], cfg, gen)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--purifier", default=None)
    ap.add_argument("--channels", type=int, nargs="+", default=None,
                    help="UNet block channels of the untrained net used without --purifier")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-single", type=int, default=4, help="images timed one at a time")
    ap.add_argument("--T", type=int, default=10, help="noise level per round (paper 150)")
    ap.add_argument("--rounds", type=int, default=1, help="paper 5")
    ap.add_argument("--keep-last", type=int, default=4, help="paper 10")
    ap.add_argument("--ddim-stride", type=int, default=2)
    ap.add_argument("--n-e2e", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/dataelixir_throughput_cpu.json")
    ap.add_argument("--note", default="", help="free text stored with the machine (e.g. how loaded it was)")
    a = ap.parse_args()
    load_at_start = list(os.getloadavg())
    if a.batch < 256:
        raise SystemExit("--batch must be ≥ 256 (the acceptance criterion compares batch ≥ 256 with batch 1)")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    purifier = _purifier(a.purifier, a.image_size, a.channels)
    victim = build_classifier("small_cnn", 10, image_size=a.image_size).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(a.batch, a.n_e2e), a.image_size, a.image_size, 3), dtype=np.uint8)
    x01 = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    base = DataElixirConfig(T=a.T, rounds=a.rounds, keep_last=a.keep_last, ddim_stride=a.ddim_stride)

    samplers = {}
    for mode in ("ddpm", "ddim"):
        cfg = base.model_copy(update={"sampler": mode}).resolved(a.image_size)
        _time_candidates(purifier, victim, x01[:2], cfg, 1)  # warm-up: first calls pay one-off allocation costs
        steps = a.T if mode == "ddpm" else -(-a.T // a.ddim_stride)
        t_batch = _time_candidates(purifier, victim, x01[: a.batch], cfg, a.batch)
        t_single = _time_candidates(purifier, victim, x01[: a.n_single], cfg, 1)
        batched, single = a.batch / t_batch, a.n_single / t_single
        samplers[mode] = {
            "unet_passes_per_image": steps * a.rounds,
            "batched_images_per_s": round(batched, 3),
            "single_images_per_s": round(single, 3),
            "speedup_batched_vs_single": round(batched / single, 2),
            "batched_unet_image_passes_per_s": round(batched * steps * a.rounds, 1),
            "seconds_batched": round(t_batch, 2), "seconds_single": round(t_single, 2),
        }
        print(mode, samplers[mode], flush=True)

    # end to end: all four stages, DDIM, on n_e2e random images (relabel training only runs if S has targets)
    cfg = base.model_copy(update={"sampler": "ddim", "batch_size": a.batch, "shard_size": a.batch,
                                  "relabel_epochs": 1, "finetune_epochs": 1})
    train = ImageSet(images=images[: a.n_e2e], labels=rng.integers(0, 10, a.n_e2e).astype(np.int64),
                     class_names=[str(i) for i in range(10)])
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        res = DataElixir(purifier, cfg, VictimConfig(epochs=1)).sanitize(train, victim, work, progress=False)
        e2e = time.perf_counter() - start
    paper_passes = 150 * 5
    out = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": a.threads, "gpu": "none", "loadavg_at_end": os.getloadavg(),
                    "note": a.note},
        "purifier": {"path": a.purifier, "params": count_params(purifier.unet)},
        "victim": "small_cnn (untrained; speed does not depend on weights)",
        "image_size": a.image_size,
        "setting": {"T": a.T, "rounds": a.rounds, "keep_last": a.keep_last, "ddim_stride": a.ddim_stride,
                    "batch": a.batch, "n_single": a.n_single},
        "candidates": samplers,
        "end_to_end": {
            "sampler": "ddim", "images": a.n_e2e, "seconds": round(e2e, 2),
            "seconds_per_1000_images_extrapolated": round(e2e / a.n_e2e * 1000, 1),
            "target_labels_found": res.target_labels,
        },
        "paper_setting_estimate": {
            "unet_passes_per_image": paper_passes,
            "ddpm_seconds_per_1000_images_from_measured_pass_rate": round(
                1000 * paper_passes / samplers["ddpm"]["batched_unet_image_passes_per_s"], 1),
            "note": "extrapolated from the measured batched DDPM pass rate, not run",
        },
        "command": "python " + shlex.join(sys.argv),  # as run (relative paths from the project root)
        "niceness": os.nice(0),
        "load_average_at_start": load_at_start,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
