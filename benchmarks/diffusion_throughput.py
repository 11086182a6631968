"""Throughput of the diffusion core: UNet passes/s, sampler images/s, and the fraction of the machine's
arithmetic limit they reach.

    .venv/bin/python benchmarks/diffusion_throughput.py --threads 2            # CPU → results/..._cpu.json
    .venv/bin/python benchmarks/diffusion_throughput.py --device cuda --compile  # GPU (bf16 autocast)
    # CPU, fp32 against bf16 on a CPU with native bf16 (diffusion.precision: native), one thread
    .venv/bin/python benchmarks/diffusion_throughput.py --threads 1 --configs default-16 default-1.06M \
        --precision native --out benchmarks/results/diffusion_throughput_cpu_native.json

For every UNet configuration and batch size it times forward passes (no grad, eval mode; in ``--precision``, i.e.
bf16 autocast on CUDA by default, and channels_last on CUDA), counts the FLOPs of one pass with ``torch.utils.flop_counter.FlopCounterMode``
(2 FLOPs per multiply-add, convolutions and matmuls only) and compares ``FLOPs/image × images/s`` with
the measured dense matmul rate of the same device and dtype: ``fraction_of_matmul``. It also times the
samplers as the defenses use them: DDPM from t = 20 (SampDetox stage 1, 20 passes) and DDIM from t = 120
with stride 20 (6 passes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from detoxops.config import UNetConfig
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, count_params, denoise

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "default-1.06M": UNetConfig(sample_size=32),
    "ddpm-cifar10-35.7M": UNetConfig(sample_size=32, preset="ddpm-cifar10"),
    "default-16": UNetConfig(sample_size=16),  # the digits purifier's shape (the demo's)
}


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, min_seconds: float, min_reps: int = 2) -> float:
    """Seconds per call: one warm-up call, then repeat until ``min_seconds`` and ``min_reps`` are reached."""
    fn()
    _sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and reps >= min_reps:
            return elapsed / reps


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, min_seconds: float) -> float:
    """Dense square matmul GFLOP/s (2 n³ per product) — the practical arithmetic limit of the device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: torch.mm(a, b), device, min_seconds, min_reps=3)
    return 2 * n**3 / sec / 1e9


def flops_per_image(unet: torch.nn.Module, size: int, device: torch.device) -> float:
    x = torch.randn(2, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([10, 10], device=device))
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--sampler-batch", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timing window per measurement")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA)")
    parser.add_argument("--precision", default="auto", choices=["auto", "native", "bf16", "fp32"],
                        help="the purifier's forward pass (params.yaml diffusion.precision)")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([64, 256, 1024, 2048] if cuda else [1, 16, 64, 256])
    sampler_batch = args.sampler_batch or (1024 if cuda else 64)
    probe = Purifier(build_unet(CONFIGS["default-16"]), NoiseSchedule.linear(), precision=args.precision)
    amp_dtype = torch.bfloat16 if probe.uses_bf16(device) else torch.float32
    gflops = matmul_rate(device, amp_dtype, 8192 if cuda else 1024, args.min_seconds)
    print(f"matmul {amp_dtype}: {gflops:.1f} GFLOP/s")
    results = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/diffusion_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False, "")),
        "machine": machine_info(device),
        "note": args.note,
        "dtype": str(amp_dtype),
        "precision": args.precision,
        "matmul_gflops": gflops,
        "unets": [],
    }
    sched = NoiseSchedule.linear()
    for name in args.configs:
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        unet = build_unet(cfg).to(device).eval()
        flops = flops_per_image(unet, cfg.sample_size, device)
        if cuda:
            unet = unet.to(memory_format=torch.channels_last)
        net = torch.compile(unet) if args.compile else unet
        purifier = Purifier(unet, sched, precision=args.precision)
        if args.compile:
            purifier.unet = net  # the compiled module behaves like the UNet (.config, parameters)
        entry = {"name": name, "params": count_params(unet), "gflops_per_image": flops / 1e9, "passes": []}
        for bs in batch_sizes:
            if not cuda and name.startswith("ddpm") and bs > 16:
                continue  # ~12 GFLOPs per image: larger CPU batches only repeat the same number, slowly
            x = torch.randn(bs, 3, cfg.sample_size, cfg.sample_size, device=device)
            t = torch.full((bs,), 50, device=device)
            sec = timed(lambda x=x, t=t, p=purifier: p(x, t), device, args.min_seconds)
            ips = bs / sec
            frac = flops * ips / (gflops * 1e9)
            entry["passes"].append({"batch": bs, "seconds_per_call": sec, "image_passes_per_s": ips,
                                    "fraction_of_matmul": frac})
            print(f"{name} batch {bs}: {ips:.1f} image-passes/s, {100 * frac:.1f}% of matmul rate")
        bs = sampler_batch if not (not cuda and name.startswith("ddpm")) else 8
        x = torch.randn(bs, 3, cfg.sample_size, cfg.sample_size, device=device).clamp(-1, 1)
        samplers = {"ddpm_t20": dict(t_start=20, mode="ddpm"),
                    "ddim_t120_stride20": dict(t_start=120, mode="ddim", stride=20)}
        entry["samplers"] = {}
        for key, kw in samplers.items():
            gen = torch.Generator(device=device).manual_seed(0)
            sec = timed(lambda kw=kw, gen=gen, p=purifier, x=x: denoise(p, x, generator=gen, **kw), device,
                        args.min_seconds, min_reps=1)
            entry["samplers"][key] = {"batch": bs, "seconds": sec, "images_per_s": bs / sec}
            print(f"{name} {key} batch {bs}: {bs / sec:.1f} images/s")
        results["unets"].append(entry)
    out = args.out or RESULTS / f"diffusion_throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
