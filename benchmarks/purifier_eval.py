"""Purifier benchmark: denoising PSNR per level and inpainting PSNR inside holes, uniform vs level-map purifier.

    nice -n 10 .venv/bin/python benchmarks/purifier_eval.py --data ../shared/datasets/cifar10-jpeg.tar.gz \
        --purifier uniform=cifar10 --purifier levelmap=runs/levelmap_cifar10 --threads 1

Reads the first ``--n`` CIFAR-10 test images (``read_per_class``: the archive's first n/10 of every class).
Per purifier: PSNR of the noisy input, the one-shot x̂0 and the full DDIM restoration at t = 20, 120, 300
(``evaluate_denoising``); inpainting PSNR inside 3x3 / 4x4 / 8x8 holes restored from full noise (t = T) with
clean context (``evaluate_inpainting``) with today's per-pixel sampler, and for uniform purifiers also with
RePaint-style resampling (U = each ``--repaint-resample`` value); with ``--tasks victim`` the accuracy of
``--victim`` (a classifier folder or victim-store name) on the clean images, the one-shot x̂0 and the DDIM
restorations at the same levels (issue #25: within 8 points of clean at t = 120, within 2 at t = 20). Every entry is stored in ``--json`` as it
finishes, keyed by purifier weights (sha256), task and settings, and is not recomputed by a rerun; the
markdown table ``--md`` is rewritten from the JSON at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _record import purifier_sha  # noqa: E402


def _folder(spec: str) -> Path:
    from detoxops.diffusion.unet import ALL_SHIPPED_PURIFIERS, shipped_purifier_dir

    if Path(spec).is_dir():
        return Path(spec)
    names = {"cifar10": "cifar10-32", **{n: n for n in ALL_SHIPPED_PURIFIERS}}
    if spec in names:
        return shipped_purifier_dir(names[spec])
    raise SystemExit(f"--purifier: {spec!r} is neither a folder nor a shipped purifier name")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 archive with test/<class>/<file> members")
    ap.add_argument("--purifier", action="append", required=True, help="LABEL=folder-or-shipped-name (repeat)")
    ap.add_argument("--n", type=int, default=256, help="test images for the denoising PSNR")
    ap.add_argument("--levels", default="20,120,300")
    ap.add_argument("--restore-stride", type=int, default=20, help="DDIM stride of the full restoration")
    ap.add_argument("--restore-mode", choices=("ddim", "ddpm"), default="ddim",
                    help="sampler of the victim task's restoration (the denoise task always uses DDIM)")
    ap.add_argument("--restore-eta", type=float, default=0.0,
                    help="DDIM eta of the victim task's restoration (0 deterministic, 1 ancestral noise)")
    ap.add_argument("--inpaint-n", type=int, default=None, help="test images for inpainting (the first of --n; "
                    "default: all --n)")
    ap.add_argument("--holes", default="3,4,8")
    ap.add_argument("--inpaint-stride", type=int, default=50, help="DDIM stride from t = T (50: 20 steps)")
    ap.add_argument("--repaint-resample", default="1", help="RePaint U values for uniform purifiers ('' = none)")
    ap.add_argument("--tasks", default="denoise,inpaint", help="which tasks, in this order (denoise, inpaint, victim)")
    ap.add_argument("--victim", default="cifar10-fast/clean", help="classifier of the victim task (folder or "
                    "victim-store name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/purifier_eval_cifar10.json")
    ap.add_argument("--md", type=Path, default=ROOT / "docs/results/purifier_eval_cifar10.md")
    ap.add_argument("--merge", type=Path, action="append", default=[], help="also take the entries of this JSON")
    ap.add_argument("--note", default="", help="free text stored with the results (machine load, ...)")
    args = ap.parse_args(argv)

    import torch

    from detoxops.data.archive_sample import read_per_class
    from detoxops.data.splits import class_interleaved_indices
    from detoxops.diffusion import load_purifier
    from detoxops.diffusion.inpaint import evaluate_inpainting
    from detoxops.diffusion.train import evaluate_denoising
    from detoxops.fileio import atomic_write_text
    from detoxops.models import load_classifier, predict
    from detoxops.models.store import resolve_classifier_path

    if args.threads:
        torch.set_num_threads(args.threads)
    levels = tuple(int(v) for v in args.levels.split(",") if v.strip())
    sides = tuple(int(v) for v in args.holes.split(",") if v.strip())
    resamples = tuple(int(v) for v in args.repaint_resample.split(",") if v.strip())
    args.inpaint_n = args.n if args.inpaint_n is None else args.inpaint_n
    if args.inpaint_n > args.n:
        raise SystemExit("--inpaint-n must be <= --n")
    per_class = -(-args.n // 10)
    images, labels = read_per_class(args.data, "test", per_class)
    # read_per_class sorts by class; interleave the classes (image j of every class, then j + 1) so that the
    # first n (and the first --inpaint-n) hold every class about equally
    order = class_interleaved_indices(labels)
    images, labels = images[order][:args.n], labels[order][:args.n]

    results = json.loads(args.json.read_text()) if args.json.is_file() else {"entries": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    results["machine"] = (f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
                          "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name())
    commands = results.setdefault("commands", [])  # every run that stored entries here, oldest first
    if results.get("command") and results["command"] not in commands:
        commands.append(results["command"])
    results["command"] = " ".join(["python", *sys.argv])
    results["data"] = (f"{args.n} CIFAR-10 test images of {Path(args.data).name}: the first {per_class} of every "
                       "class (read_per_class), classes interleaved, the first n of them")

    for other in args.merge:  # entries measured by another run (e.g. one run at the same time into its own file)
        other_results = json.loads(other.read_text())
        for cmd in [*other_results.get("commands", []), other_results.get("command")]:
            if cmd and cmd not in commands:
                commands.append(cmd)
        for key, entry in other_results["entries"].items():
            results["entries"].setdefault(key, entry)
    if results["command"] not in commands:
        commands.append(results["command"])

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        if args.json.is_file():  # keep what a concurrent run of this script stored meanwhile
            for key, entry in json.loads(args.json.read_text())["entries"].items():
                results["entries"].setdefault(key, entry)
        atomic_write_text(args.json, json.dumps(results, indent=1))

    def run(key: str, label: str, task: str, fn) -> None:
        if key in results["entries"]:
            print(f"{key}: done before, kept", flush=True)
            return
        load0, wall0, cpu0 = os.getloadavg()[0], time.time(), time.process_time()
        metrics = fn()
        results["entries"][key] = {"label": label, "task": task, "metrics": metrics, "commit": commit,
                                   "wall_s": round(time.time() - wall0, 1),
                                   "cpu_s": round(time.process_time() - cpu0, 1),
                                   "loadavg_1min": [round(load0, 1), round(os.getloadavg()[0], 1)],
                                   "note": args.note}
        save()
        print(f"{key}: {json.dumps(metrics)}", flush=True)

    for spec in args.purifier:
        label, _, where = spec.partition("=")
        folder = _folder(where or label)
        purifier = load_purifier(folder)
        sha = purifier_sha(folder)
        kind = "level-map" if getattr(purifier, "accepts_level_map", False) else "uniform"
        results.setdefault("purifiers", {})[label] = {"folder": str(folder), "sha": sha, "kind": kind}
        for task in (t.strip() for t in args.tasks.split(",") if t.strip()):
            if task == "denoise":
                run(f"{label}@{sha}/denoise/n{args.n}/ddim{args.restore_stride}/{args.seed}", label, "denoise",
                    lambda p=purifier: evaluate_denoising(p, images, levels, mode="ddim", stride=args.restore_stride,
                                                          seed=args.seed, batch_size=64))
                continue
            if task == "victim":
                victim = load_classifier(args.victim)
                # the victim's weights are part of the key: a retrained store victim of the same name is another one
                victim_sha = hashlib.sha256((resolve_classifier_path(args.victim) / "model.safetensors")
                                            .read_bytes()).hexdigest()[:12]
                # "ddim20" alone (no eta) keeps the keys of the entries stored before the sampler was a choice
                sampler = f"{args.restore_mode}{args.restore_stride}" + (
                    f"-eta{args.restore_eta:g}" if args.restore_mode == "ddim" and args.restore_eta else "")
                if tuple(levels) != (20, 120, 300):  # other levels are another entry (default: the old keys)
                    sampler += "-t" + "-".join(str(t) for t in levels)
                run(f"{label}@{sha}/victim/{args.victim}@{victim_sha}/n{args.n}/{sampler}/{args.seed}",
                    label, f"victim:{args.victim}@{victim_sha}",
                    lambda p=purifier, v=victim: evaluate_denoising(
                        p, images, levels, mode=args.restore_mode, stride=args.restore_stride, eta=args.restore_eta,
                        seed=args.seed, batch_size=64, classify=lambda batch: predict(v, batch), labels=labels))
                continue
            if task != "inpaint":
                raise SystemExit(f"--tasks: unknown task {task!r} (denoise, inpaint, victim)")
            methods = [("per-pixel", 1)] + ([("repaint", u) for u in resamples] if kind == "uniform" else [])
            for method, u in methods:
                tag = method if method == "per-pixel" else f"repaint-U{u}"
                run(f"{label}@{sha}/inpaint/{tag}/n{args.inpaint_n}/ddim{args.inpaint_stride}/{args.seed}", label,
                    f"inpaint:{tag}",
                    lambda p=purifier, m=method, u=u: evaluate_inpainting(
                        p, images[:args.inpaint_n], sides, method=m, stride=args.inpaint_stride, resample=u,
                        seed=args.seed))
    save()  # merged entries and the command list, even when nothing new was measured
    write_markdown(results, args.md)
    return 0


def write_markdown(results: dict, path: Path) -> None:
    results = json.loads(json.dumps(results))  # the keys as stored (levels and sides become strings)
    lines = ["# Purifier evaluation (CIFAR-10)", "", "Commands (every run that stored entries, oldest first; each "
             "entry's wall / CPU seconds and 1-min load average before / after are in the tables):", "",
             *[f"- `{c}`" for c in results.get("commands", [results.get("command", "")])], "",
             f"Machine: {results.get('machine', '')}. Data: {results.get('data', '')}.", "",
             "## Denoising PSNR (dB) per level: noisy input / one-shot x̂0 / full DDIM restoration", "",
             "| purifier | level | noisy | one-shot | restored | ε-MSE | wall s | CPU s | load |", "|---|---|---|---|---|---|---|---|---|"]
    for key, e in results["entries"].items():
        if e["task"] != "denoise":
            continue
        for t, m in e["metrics"].items():
            lines.append(f"| {e['label']} (`{key.split('/')[0]}`) | {t} | {m['psnr_noisy']:.2f} | "
                         f"{m['psnr_x0_oneshot']:.2f} | {m.get('psnr_restored', float('nan')):.2f} | "
                         f"{m['eps_mse']:.4f} | {e['wall_s']} | {e['cpu_s']} | {e['loadavg_1min']} |")
    victim_rows = [(key, e) for key, e in results["entries"].items() if e["task"].startswith("victim:")]
    if victim_rows:
        lines += ["", "## A clean victim's accuracy (%) on restorations: clean images / one-shot x̂0 / restoration",
                  "", "Sampler: `ddim20` = DDIM stride 20, `-eta1` = with ancestral noise, `ddpm1` = DDPM every step.",
                  "", "| purifier | victim | images | sampler | level | clean | one-shot | restored | drop (restored) | "
                  "PSNR one-shot / restored | wall s | CPU s | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, e in victim_rows:
            n, sampler = key.split("/")[-3], key.split("/")[-2]
            for t, m in e["metrics"].items():
                lines.append(f"| {e['label']} (`{key.split('/')[0]}`) | {e['task'].split(':', 1)[1]} | {n[1:]} | "
                             f"{sampler} | {t} | "
                             f"{m['acc_clean']:.1f} | {m['acc_oneshot']:.1f} | {m['acc_restored']:.1f} | "
                             f"{m['acc_clean'] - m['acc_restored']:.1f} | {m['psnr_x0_oneshot']:.2f} / "
                             f"{m['psnr_restored']:.2f} | {e['wall_s']} | {e['cpu_s']} | {e['loadavg_1min']} |")
    lines += ["", "## Inpainting from full noise (t = T) with clean context: PSNR (dB) inside the hole", "",
              "| purifier | method | " + " | ".join(f"{s}x{s} hole" for s in _sides(results)) +
              " | mean-colour fill (ref.) | images | wall s | CPU s | load |",
              "|---|---|" + "---|" * (len(_sides(results)) + 5)]
    for key, e in results["entries"].items():
        if not e["task"].startswith("inpaint"):
            continue
        m = e["metrics"]
        cells = " | ".join(f"{m[str(s)]['psnr_hole']:.2f}" if str(s) in m else "-" for s in _sides(results))
        fill = " / ".join(f"{m[str(s)]['psnr_hole_mean_fill']:.2f}" for s in _sides(results) if str(s) in m)
        n = next(iter(m.values()))["n"]
        lines.append(f"| {e['label']} | {e['task'].split(':', 1)[1]} (`{'/'.join(key.split('/')[3:])}`) | {cells} | "
                     f"{fill} | {n} | {e['wall_s']} | {e['cpu_s']} | {e['loadavg_1min']} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _sides(results: dict) -> list[str]:
    sides: set[int] = set()
    for e in results["entries"].values():
        if e["task"].startswith("inpaint"):
            sides.update(int(s) for s in e["metrics"])
    return [str(s) for s in sorted(sides)]


if __name__ == "__main__":
    raise SystemExit(main())
