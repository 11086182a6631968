"""Purifier recipes compared at equal CPU (issue #25): each candidate trains from scratch for the same process-CPU
budget, then is scored on the same test images.

    OMP_NUM_THREADS=1 python benchmarks/purifier_compare.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --cpu-budget 1800 --threads 1 --set diffusion.train.max_t=600 \\
        --candidate "base:" \\
        --candidate "v:train.prediction_type=v_prediction" \\
        --candidate "x0:train.prediction_type=sample" \\
        --candidate "wide:unet.block_out_channels=[64,128,128]" \\
        --candidate "attn:unet.attention=true" \\
        --candidate "range500:train.max_t=500"

A candidate is ``NAME:OVERRIDE;OVERRIDE;...`` with overrides of the ``diffusion`` section of ``params.yaml``
(``--params``), applied on top of ``--set`` overrides shared by all. Every candidate trains into
``--work/<NAME>`` with ``diffusion train``'s resumable checkpoints and ``--cpu-budget``: the budget counts the
process CPU seconds of all sessions of that run, so an interrupted comparison resumes where it stopped and every
candidate gets the same CPU however loaded the machine was (wall time is recorded, not compared). Scoring: one-shot
x̂0 PSNR and ε-MSE at ``--levels`` on the first ``--n`` test images (classes interleaved), the same noise for every
candidate; with ``--restore-stride`` also the DDIM restoration PSNR. Results: ``--json`` (one entry per candidate,
keyed by its settings and budget; a finished entry is not recomputed) and ``--md``.
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
import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_candidate(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition(":")
    if not sep or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise SystemExit(f"--candidate {text!r}: expected NAME:OVERRIDE;... with a plain NAME (letters, digits, -_.)")
    return name, [f"diffusion.{o.strip()}" for o in rest.split(";") if o.strip()]


def filled(settings: dict, defaults: dict) -> dict:
    """``settings`` with every field it lacks taken from ``defaults`` (nested sections too): a field added to the
    config after an entry was made defaults to what the code did before it existed, so the filled settings are
    the ones that entry ran with."""
    out = dict(settings)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = filled(out[k], v)
    return out


def entry_key(name: str, settings: dict, rest: str) -> str:
    """An entry's key: its name, the ``diffusion`` settings it trained with (canonical JSON), budget and scoring."""
    return f"{name}/{json.dumps(settings, sort_keys=True)}/{rest}"


def migrate_keys(entries: dict, defaults: dict) -> dict:
    """Re-key entries made before a config field existed (their keys lack it) as if made now, so a rerun finds
    them instead of training them again. A key that does not parse is kept as it is."""
    out = {}
    for key, entry in entries.items():
        name, sep, tail = key.partition("/")
        settings_text, sep2, rest = tail.rpartition("}/")
        try:
            settings = json.loads(settings_text + "}") if sep and sep2 else None
        except json.JSONDecodeError:
            settings = None
        out[entry_key(name, filled(settings, defaults), rest) if isinstance(settings, dict) else key] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--candidate", action="append", required=True, help="NAME:diffusion-override;... (repeat)")
    ap.add_argument("--cpu-budget", type=float, required=True, help="process CPU seconds of training per candidate")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override shared by all candidates")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "purifier_compare")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--levels", default="20,120,300")
    ap.add_argument("--restore-stride", type=int, default=0, help="also the DDIM restoration PSNR (0 = one-shot only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/purifier_compare_cifar10.json")
    ap.add_argument("--md", type=Path, default=ROOT / "docs/results/purifier_compare_cifar10.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from detoxops.config import load_params
    from detoxops.data import load_splits
    from detoxops.data.splits import class_interleaved_indices
    from detoxops.diffusion.train import evaluate_denoising, train_purifier
    from detoxops.fileio import atomic_write_text

    candidates = [parse_candidate(c) for c in args.candidate]
    if len({n for n, _ in candidates}) != len(candidates):
        raise SystemExit("--candidate names must be unique")
    levels = tuple(int(v) for v in args.levels.split(",") if v.strip())
    base = load_params(args.params, args.overrides, announce=False)
    splits = load_splits(args.data, base.data.model_copy(update={"source": args.data}), progress=False)
    train_images = np.asarray(splits["train"].images)
    test_images = np.asarray(splits["test"].images)[class_interleaved_indices(splits["test"].labels)][: args.n]
    from detoxops.config import DiffusionConfig

    results = json.loads(args.json.read_text()) if args.json.is_file() else {"entries": {}}
    results["entries"] = migrate_keys(results["entries"],
                                      DiffusionConfig().model_dump(mode="json", exclude={"purifier", "precision"}))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    results.update(command=shlex.join(["python", *sys.argv]), machine=f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"torch threads {args.threads}, " + ("no GPU" if not torch.cuda.is_available() else
                                                        torch.cuda.get_device_name()),
                   data=f"train: all {len(train_images)} training images of {Path(args.data).name}; score: the first "
                   f"{len(test_images)} test images, classes interleaved")
    for name, overrides in candidates:
        # the CPU budget ends training: steps only as a bound no candidate reaches, unless one sets it
        params = load_params(args.params, ["diffusion.train.steps=100000000", *args.overrides, *overrides],
                             announce=False)
        settings = params.diffusion.model_dump(mode="json", exclude={"purifier", "precision"})
        key = entry_key(name, settings, f"cpu{args.cpu_budget:g}/n{len(test_images)}/{args.levels}/"
                                        f"ddim{args.restore_stride}")
        if key in results["entries"]:
            print(f"{name}: done before, kept", flush=True)
            continue
        wall0 = time.time()
        purifier, history = train_purifier(train_images, params.diffusion, args.work / name, progress=args.progress,
                                           cpu_budget_s=args.cpu_budget)
        wall = time.time() - wall0
        metrics = evaluate_denoising(purifier, test_images, levels, mode="ddim", stride=max(args.restore_stride, 1),
                                     restore=args.restore_stride > 0, batch_size=64)
        results["entries"][key] = {
            "name": name, "overrides": overrides, "steps": history["step"], "cpu_seconds": round(history["cpu_seconds"], 1),
            "train_wall_s_this_call": round(wall, 1), "final_loss": history["loss"][-1][1] if history["loss"] else None,
            "parameters": sum(p.numel() for p in purifier.unet.parameters()), "metrics": metrics, "commit": commit,
            "load_avg_end": list(os.getloadavg())}
        atomic_write_text(args.json, json.dumps(results, indent=1))
        print(f"{name}: {history['step']} steps in {history['cpu_seconds']:.0f} CPU-s: "
              + ", ".join(f"t={t} {m['psnr_x0_oneshot']:.2f} dB" for t, m in metrics.items()), flush=True)
    write_markdown(results, args.md)
    return 0


def write_markdown(results: dict, path: Path) -> None:
    results = json.loads(json.dumps(results))  # levels as stored (strings)
    entries = list(results["entries"].values())
    levels = sorted({int(t) for e in entries for t in e["metrics"]})
    lines = ["# Purifier recipes at equal CPU (issue #25)", "", f"Command: `{results.get('command', '')}`", "",
             f"Machine: {results.get('machine', '')}. Data: {results.get('data', '')}.", "",
             "One-shot x̂0 PSNR (dB) per level; every candidate trained from scratch for the same process-CPU budget.",
             "", "| candidate | overrides | parameters | steps | CPU s | " + " | ".join(f"t={t}" for t in levels)
             + " | final loss |", "|---|---|---|---|---|" + "---|" * len(levels) + "---|"]
    for e in entries:
        cells = " | ".join(f"{e['metrics'][str(t)]['psnr_x0_oneshot']:.2f}" if str(t) in e["metrics"] else "-"
                           for t in levels)
        lines.append(f"| {e['name']} | `{'; '.join(e['overrides']) or '(params.yaml)'}` | {e['parameters']:,} | "
                     f"{e['steps']} | {e['cpu_seconds']} | {cells} | "
                     + (f"{e['final_loss']:.4f} |" if e["final_loss"] is not None else "- |"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
