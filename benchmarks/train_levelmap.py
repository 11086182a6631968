"""Fine-tune the level-map purifier from the shipped uniform CIFAR-10 purifier on the CIFAR-10 training images.

    nice -n 10 .venv/bin/python benchmarks/train_levelmap.py --data ../shared/datasets/cifar10-jpeg.tar.gz \
        --out runs/levelmap_cifar10 --time-budget 3600 --threads 2

Resumes from ``OUT/checkpoint`` (same config) after any interruption; ``OUT`` is a loadable purifier folder after
every checkpoint and ``OUT/training.json`` records steps, wall and process-CPU seconds summed over all runs, and
``OUT/runs.jsonl`` one line per invocation (command, machine load, steps done).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 source (archive / stored version) with a train split")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--init", default="cifar10", help="uniform purifier to start from (folder or shipped name)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--loss", choices=("image", "noisy", "all"), default="image")
    ap.add_argument("--p-full-noise", type=float, default=0.3)
    ap.add_argument("--p-clean-context", type=float, default=0.6)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None, help="stop after this many wall seconds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from detoxops.config import DataConfig
    from detoxops.data import load_source
    from detoxops.diffusion import default_purifier, load_purifier
    from detoxops.diffusion.levelmap import LevelMapTrainConfig, train_levelmap_purifier

    if args.threads:
        torch.set_num_threads(args.threads)
    init = load_purifier(args.init) if Path(args.init).is_dir() else default_purifier(args.init)
    images = load_source(args.data, DataConfig(source=args.data, image_size=32), progress=False)["train"].images
    cfg = LevelMapTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                              loss=args.loss, checkpoint_every=args.checkpoint_every, seed=args.seed,
                              p_full_noise=args.p_full_noise, p_clean_context=args.p_clean_context)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(step: int, _purifier) -> None:
        print(f"{time.strftime('%H:%M:%S')} step {step} load {os.getloadavg()[0]:.1f}", flush=True)

    _, history = train_levelmap_purifier(images, init, args.out, cfg, progress=not args.no_progress,
                                         time_budget_s=args.time_budget, on_checkpoint=log)
    record = {"command": " ".join(sys.argv), "init": args.init, "train_images": int(len(images)),
              "finished_at_step": history["step"], "wall_s_this_run": round(time.time() - started, 1),
              "total_cpu_s": round(history["cpu_seconds"], 1), "total_wall_s": round(history["seconds"], 1),
              "loadavg_at_end": os.getloadavg(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}"}
    with open(args.out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
