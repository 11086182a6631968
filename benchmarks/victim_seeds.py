"""Summarise clean-victim runs over seeds (the JSON files ``attack_table.py --attacks clean --seed N`` wrote):
mean and spread of CA with and without TTA, training wall / CPU time and the machine's load while they ran.

    python benchmarks/victim_seeds.py benchmarks/results/fast_victim_clean_s{0,1,2}.json \
        --out-json benchmarks/results/fast_victim_clean_seeds.json --out-md docs/results/victims-cifar10-fast-cpu.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def summarise(paths: list[Path]) -> dict:
    runs = []
    for path in paths:
        result = json.loads(path.read_text())
        clean = next(r for r in result["rows"] if r["attack"] == "clean")
        runs.append({"file": str(path), "command": result["command"], "machine": result["machine"], **clean})
    summary = {"runs": runs, "seeds": [r["seed"] for r in runs]}
    for key in ("ca", "ca_tta2", "ca_fp16", "train_seconds", "train_cpu_seconds"):
        values = [r[key] for r in runs if key in r]
        if values:
            summary[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return summary


def markdown(summary: dict, command: str) -> str:
    def pct(key: str) -> str:
        s = summary.get(key)
        return f"{100 * s['mean']:.2f} (min {100 * s['min']:.2f}, max {100 * s['max']:.2f}, sd {100 * s['std']:.2f})" if s else "–"

    lines = [
        "# Clean `fast_cnn` victims on CIFAR-10, trained on the CPU",
        "",
        f"Summary command: `{command}`",
        "",
        "Each seed: all 50,000 training images, CA on all 10,000 test images (the JPEG copy of CIFAR-10), airbench94's "
        "recipe (`victim.arch: fast_cnn`, 9.9 epochs of batch 1,024, bf16 autocast on the CPU).",
        "",
        "| seed | CA | CA with TTA 2 | CA of the stored fp16 weights | training wall s | training CPU s | load avg at start / end (1 min) | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        ca, tta, fp16 = (f"{100 * r[k]:.2f}" if k in r else "–" for k in ("ca", "ca_tta2", "ca_fp16"))
        lines.append(f"| {r['seed']} | {ca} | {tta} | {fp16} | {r.get('train_seconds', '–')} | "
                     f"{r.get('train_cpu_seconds', '–')} | {r['load_avg_start'][0]} / {r['load_avg_end'][0]} | "
                     f"`{r['command']}` |")
    machine = summary["runs"][0]["machine"]
    lines += [
        "",
        f"Mean over {len(summary['runs'])} seeds: CA {pct('ca')}; with TTA 2 {pct('ca_tta2')}; stored fp16 weights "
        f"{pct('ca_fp16')}.",
        "",
        f"Hardware: {machine['cpu']}, {machine['cores']} training thread(s), torch {machine['torch']}, GPU: {machine['gpu']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out-json", type=Path, required=True)
    ap.add_argument("--out-md", type=Path, required=True)
    args = ap.parse_args(argv)
    command = "python benchmarks/victim_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = summarise(args.results)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps({"command": command, **summary}, indent=1))
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(markdown(summary, command))
    print(args.out_md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
