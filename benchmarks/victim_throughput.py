"""Training throughput of the victims on this machine: images / s of one optimiser step (forward, backward,
Nesterov SGD) on random 32x32 batches, for ``fast_cnn`` contiguous fp32 / channels_last fp32 / channels_last with
bf16 autocast and 1 vs 2 threads, next to ``small_cnn`` and ``preact_resnet18``. Writes JSON with the machine and the load average.

    python benchmarks/victim_throughput.py --out benchmarks/results/victim_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_table import machine  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402
from detoxops.models import build_classifier  # noqa: E402


def images_per_second(arch: str, batch: int, threads: int, channels_last: bool, bf16: bool, steps: int) -> float:
    torch.set_num_threads(threads)
    model = build_classifier(arch, 10, 3, 32, seed=0).train()
    if arch == "fast_cnn":
        model.init_whitening(torch.rand(256, 3, 32, 32))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.85, nesterov=True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), generator=g)
    times = []
    for _ in range(steps + 1):  # the first step warms up the allocator and kernels
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch / (sum(times[1:]) / steps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/victim_throughput_cpu.json")
    args = ap.parse_args(argv)
    cases = [("fast_cnn", 1024, t, cl, bf) for t in (1, 2) for cl, bf in ((False, False), (True, False), (True, True))]
    cases += [("small_cnn", 128, 2, False, False), ("preact_resnet18", 128, 2, True, True)]
    rows = []
    load0 = os.getloadavg()
    for arch, batch, threads, cl, bf16 in cases:
        ips = images_per_second(arch, batch, threads, cl, bf16, args.steps)
        rows.append({"arch": arch, "batch": batch, "threads": threads, "channels_last": cl, "bf16_autocast": bf16,
                     "images_per_s": round(ips, 1), "epoch_50k_minutes": round(50_000 / ips / 60, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python benchmarks/victim_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "load_avg_start": [round(v, 2) for v in load0],
           "load_avg_end": [round(v, 2) for v in os.getloadavg()], "rows": rows}
    atomic_write_text(args.out, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
