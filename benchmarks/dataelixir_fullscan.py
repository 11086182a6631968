"""DataElixir's cost at scale through the Prefect flow (issue #21, deliverable 3): wall time of
``flows.sanitize.sanitize_version`` on N poisoned CIFAR-10 training images with a given victim, on the thread runner
or on a local Dask cluster of W workers, with the per-image extrapolation to the whole training split stated.

    # the 10,000-image poisoned set and victim of benchmarks/dataelixir_cifar10_fast.py (seed 1, BadNets)
    OMP_NUM_THREADS=1 python benchmarks/dataelixir_fullscan.py \\
        --poisoned runs/dataelixir_cifar10_fast/seed1/badnets/poisoned/train \\
        --victim runs/dataelixir_cifar10_fast/seed1/badnets/victim --n 5000 --runner dask --workers 2 \\
        -s dataelixir.T=80 -s dataelixir.rounds=4 -s dataelixir.sampler=ddim -s dataelixir.ddim_stride=10 \\
        -s dataelixir.keep_last=1 --note "quiet machine"

``--n`` images drawn at random (``--seed``) within each (label, poisoned) group in proportion to its size, so the
sample keeps the set's label shares and its poisoned share (a prefix does not: a stored poisoned set may hold its
poison in one part), are stored as a dataset version under ``--work`` and sanitised by the flow with ``--workers``
candidate tasks (``--runner dask``: that many single-threaded worker processes; ``thread``: the flow's thread
pool). Each run gets its own output root
(nothing cached is reused) and appends one entry to ``--json``: wall seconds, images/s, the extrapolation
``wall · 50,000 / n`` to a full CIFAR-10 scan (the candidate stage, linear in n, dominates; the per-set stages —
anomaly index, relabelling model — are counted once, so the extrapolation is an upper bound on their part), the
machine's load before and after, the settings and the code version. Run it on a quiet machine: on a shared 2-core
CPU the 2-worker number measures the other jobs as much as the flow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL = 50_000  # CIFAR-10's training split


def proportional_sample(groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` samples drawn at random within each group, each group's share of ``n`` proportional to
    its size (largest remainder), so a (label, poisoned) grouping keeps both the label and the poisoned shares."""
    groups = np.asarray(groups)
    if not 0 < n <= len(groups):
        raise ValueError(f"n must be in 1..{len(groups)}, got {n}")
    values, counts = np.unique(groups, return_counts=True)
    quota = counts * n / len(groups)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(take - quota, kind="stable")[: n - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(groups == v), k, replace=False) for v, k in zip(values, take, strict=True)]
    return np.sort(np.concatenate(picked))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--poisoned", type=Path, required=True, help="poisoned training ImageSet folder")
    ap.add_argument("--victim", required=True, help="classifier folder or victim-store name")
    ap.add_argument("--purifier", default=None, help="purifier folder (default: the one shipped for the image size)")
    ap.add_argument("--n", type=int, default=5000, help="images to sanitise (a proportional random sample)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--runner", choices=["thread", "dask"], default="thread")
    ap.add_argument("--workers", type=int, default=1, help="candidate tasks (dask: worker processes)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="params override")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "dataelixir_fullscan")
    ap.add_argument("--note", default="", help="free text stored with the entry (machine load, ...)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/dataelixir_fullscan.json")
    args = ap.parse_args(argv)
    if args.n < 2 or args.workers < 1:
        raise SystemExit(f"--n must be >= 2 and --workers >= 1, got {args.n} / {args.workers}")

    from detoxops.config import load_params
    from detoxops.data import ImageSet, save_version
    from detoxops.fileio import atomic_write_text
    from detoxops.models.store import resolve_classifier_path
    from detoxops.operations import choose_purifier, dataelixir_diffusion
    from flows.runners import make_task_runner, worker_api
    from flows.sanitize import sanitize_version

    train = ImageSet.load(args.poisoned)
    groups = np.asarray(train.labels) * 2 + np.asarray(train.poisoned, dtype=np.int64)
    subset = train.subset(proportional_sample(groups, args.n, args.seed))
    size = int(np.asarray(subset.images).shape[1])
    params = load_params(Path(args.params), list(args.overrides), announce=False)
    purifier = args.purifier or str(choose_purifier(None, dataelixir_diffusion(params, size), size)[0])
    run = f"{args.runner}-w{args.workers}-n{len(subset)}-{time.strftime('%Y%m%d-%H%M%S')}"
    version = save_version({"train": subset}, args.work / "versions", "fullscan", source=str(args.poisoned))
    victim = str(resolve_classifier_path(args.victim))
    flow = sanitize_version if args.runner == "thread" and args.workers == 1 else sanitize_version.with_options(
        task_runner=make_task_runner(args.runner, args.workers))
    load0, wall0 = list(os.getloadavg()), time.time()
    with worker_api(args.runner):
        result = flow(str(version), victim, purifier, args.params, list(args.overrides),
                      out_root=str(args.work / run), workers=args.workers)
    wall = time.time() - wall0
    entry = {"run": run, "command": shlex.join(["python", *sys.argv]), "n": len(subset),
             "poisoned_share": float(np.mean(subset.poisoned)), "seed": args.seed, "runner": args.runner,
             "workers": args.workers,
             "overrides": args.overrides, "victim": args.victim, "purifier": purifier, "wall_s": round(wall, 3),
             "images_per_s": round(len(subset) / wall, 3), "extrapolated_full_scan_s": round(wall * FULL / len(subset)),
             "target_label": result.get("target_label"), "tpr": result.get("tpr"), "fpr": result.get("fpr"),
             "parallel_shards": result.get("parallel_shards"), "load_avg_before": load0,
             "load_avg_after": list(os.getloadavg()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip(), "note": args.note}
    record = json.loads(args.json.read_text()) if args.json.is_file() else {"entries": []}
    record["entries"].append(entry)
    atomic_write_text(args.json, json.dumps(record, indent=1))
    print(json.dumps(entry, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
