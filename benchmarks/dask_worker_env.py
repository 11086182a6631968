"""What Dask's default worker environment costs a torch process: the CPU time, system time and page faults of the
shipped purifier's UNet forward passes in a fresh process with and without ``MALLOC_TRIM_THRESHOLD_=65536`` (the
value Dask's nanny exports to its workers unless configured otherwise; flows/runners.py unsets it for the local
cluster). CPU time, not wall time, is the measure: it does not depend on what else the machine runs.

    python benchmarks/dask_worker_env.py [--repeats 3] [--batch 64] [--passes 8] [--out benchmarks/results/dask_worker_env.json]

Each (setting, repeat) runs in its own subprocess with one torch thread; the result file holds every run and the
per-setting medians, with the command, code version and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, provenance  # noqa: E402
from detoxops.fileio import atomic_write_text  # noqa: E402

SETTINGS = {"no threshold (thread runner; fixed Dask workers)": None,
            "MALLOC_TRIM_THRESHOLD_=65536 (Dask default)": "65536"}

PROBE = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from detoxops.diffusion.unet import load_purifier, shipped_purifier_dir
batch, passes = int(sys.argv[1]), int(sys.argv[2])
unet = load_purifier(shipped_purifier_dir(sys.argv[3])).unet.eval()
x, t = torch.randn(batch, 3, 32, 32), torch.full((batch,), 50)
with torch.inference_mode():
    unet(x, t)  # warm-up: first-call allocations and lazy initialisation are not what is measured
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(passes):
        unet(x, t)
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(json.dumps({"user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "wall_s": w1 - w0}))
"""


def probe(threshold: str | None, batch: int, passes: int, purifier: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    env |= {"OMP_NUM_THREADS": "1"} | ({"MALLOC_TRIM_THRESHOLD_": threshold} if threshold else {})
    out = subprocess.run([sys.executable, "-c", PROBE, str(batch), str(passes), purifier], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["cpu_s"] = row["user_s"] + row["sys_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--passes", type=int, default=8, help="UNet forward passes measured per process")
    ap.add_argument("--purifier", default="cifar10-32-v2", help="shipped purifier name")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dask_worker_env.json"))
    args = ap.parse_args(argv)
    if min(args.repeats, args.batch, args.passes) < 1:
        ap.error("--repeats, --batch and --passes must be at least 1")
    runs = {name: [probe(value, args.batch, args.passes, args.purifier) for _ in range(args.repeats)]
            for name, value in SETTINGS.items()}
    medians = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in runs.items()}
    base, dask = (medians[name] for name in SETTINGS)
    report = {**provenance(__file__, argv, threads=1), "batch": args.batch, "passes": args.passes,
              "purifier": args.purifier, "runs": runs, "medians": medians,
              "cpu_time_ratio": dask["cpu_s"] / base["cpu_s"], "fault_ratio": dask["minor_faults"] / base["minor_faults"]}
    atomic_write_text(Path(args.out), json.dumps(report, indent=1))
    for name, m in medians.items():
        print(f"{name}: cpu {m['cpu_s']:.2f} s (sys {m['sys_s']:.2f}), {m['minor_faults']:.0f} faults, wall {m['wall_s']:.2f}")
    print(f"CPU-time ratio {report['cpu_time_ratio']:.2f}, fault ratio {report['fault_ratio']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
