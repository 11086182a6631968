"""Wall and CPU time of each of the demo's compute stages, in one process, without Prefect / MLflow (issue 28).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/demo_stages.py --threads 1 [--set key=value ...]
        [--until visibility] [--work DIR]

Runs the plain functions of the demo's tasks (``tasks.*.fn``: ingest → poison → victim → visibility → purifier →
DataElixir → retrain → SampDetox evaluation per defense → the retrained model) on the demo's settings (params.yaml
+ params.demo.yaml, then ``--set``), with ``torch.set_num_threads(--threads)`` and ``victim.threads`` set to the same
number. Prints per stage ``name (wall s, process CPU s, 1-minute load after)`` and the numbers the demo prints
(TPR / FPR, CA / ASR per defense), then one JSON line with all of it. On a shared machine the CPU seconds are the
load-independent part: at one thread they are about the wall time the stage takes on a free core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, required=True, help="torch threads (and victim.threads)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override after the demo's overlay")
    ap.add_argument("--until", choices=["visibility"], default=None, help="stop after this stage")
    ap.add_argument("--max-images", type=int, default=200, help="test images per split, as the demo's default")
    ap.add_argument("--work", default=None, help="folder for data / models (default: a new temporary folder)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    from detoxops.config import load_params, overlay_overrides
    from detoxops.metrics import percent
    from tasks import DEMO_OVERLAY
    from tasks.attack_tasks import poison_dataset
    from tasks.data_tasks import ingest_dataset
    from tasks.detox_tasks import evaluate_defenses_task
    from tasks.purifier_tasks import get_purifier
    from tasks.sanitize_tasks import sanitize_dataset
    from tasks.victim_tasks import train_victim
    from tasks.visibility_tasks import visibility_rows_task

    # the overlay's keys as overrides: the JSON line records everything applied on top of params.yaml
    overrides = overlay_overrides(DEMO_OVERLAY) + [f"victim.threads={args.threads}"] + args.overrides
    params = load_params(ROOT / "params.yaml", overrides)
    root = Path(args.work or tempfile.mkdtemp(prefix="detoxops-demo-stages-"))
    stages: dict[str, list[float]] = {}
    shown: dict[str, float] = {}

    def stage(name, fn, *a):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*a)
        stages[name] = [round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1),
                        round(os.getloadavg()[0], 2)]
        print(name, tuple(stages[name]), flush=True)
        return out

    attack = params.attack.model_dump(mode="json")
    victim_cfg = params.victim.model_dump(mode="json")
    ingested = stage("ingest", ingest_dataset.fn, params.data.source, params.data.model_dump(mode="json"),
                     str(root / "data"))
    poisoned = stage("poison", poison_dataset.fn, ingested["path"], attack, str(root / "data"))
    victim = stage("victim", train_victim.fn, poisoned["path"], victim_cfg, attack, str(root / "victims"))
    stage("visibility", visibility_rows_task.fn, poisoned["path"], victim["path"], attack, args.max_images,
          int(params.attack.seed))
    if args.until != "visibility":
        purifier = stage("purifier", get_purifier.fn, params.diffusion.model_dump(mode="json"), ingested["path"],
                         str(root / "purifiers"))
        sanitized = stage("dataelixir", sanitize_dataset.fn, poisoned["path"], victim["path"], purifier["path"],
                          params.dataelixir.model_dump(mode="json"), str(root / "data"), "train", None,
                          params.diffusion.precision)
        # "shown": the numbers the demo prints, in percent (the tasks return fractions)
        shown |= {"tpr": percent(sanitized.get("tpr")), "fpr": percent(sanitized.get("fpr")),
                  "n_train": sanitized.get("n_train")}
        print({k: sanitized.get(k) for k in ("tpr", "fpr", "target_label")}, flush=True)
        clean = stage("retrain", train_victim.fn, sanitized["path"], victim_cfg, None, str(root / "victims"))
        sd_cfg, data_cfg = params.sampdetox.model_dump(mode="json"), params.data.model_dump(mode="json")
        for name in ("none", "sampdetox", "faithful"):
            row = stage(f"eval-{name}", evaluate_defenses_task.fn, poisoned["path"], victim["path"],
                        purifier["path"], [name], sd_cfg, attack, args.max_images, str(root / "samples"), data_cfg,
                        params.diffusion.precision)[0]
            shown |= {f"{name}_ca": percent(row["ca"]), f"{name}_asr": percent(row["asr"])}
        row = stage("eval-retrained", evaluate_defenses_task.fn, poisoned["path"], clean["path"], purifier["path"],
                    ["none"], sd_cfg, attack, None, str(root / "retrained"), data_cfg, params.diffusion.precision)[0]
        shown |= {"retrained_ca": percent(row["ca"]), "retrained_asr": percent(row["asr"])}
        print(shown, flush=True)
    print(json.dumps({"command": "python benchmarks/demo_stages.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      "threads": args.threads, "overrides": overrides, "stages": stages, "shown": shown}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
