"""CIFAR-10 CPU-scale attack table: for each attack, poison a stratified subset, train a small victim, and
measure CA / PA / ASR next to a clean model. Resumable: finished entries are skipped.

Every entry is also left under ``--work`` (default ``runs/shared/cifar10_cpu/<name>/``) as
``train/``, ``test/`` (ImageSets), ``victim/`` (safetensors classifier) and ``metrics.json``, with the clean
test split in ``clean_test/`` — the victims the SampDetox and DataElixir experiments use.

    python benchmarks/attack_table.py --archive ../shared/datasets/cifar10-jpeg.tar.gz \
        --attacks clean badnets blended sig wanet bpp ftrojan refool --train-per-class 500 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from detoxops.attacks import registry
from detoxops.attacks.poisoning import poison_datasets
from detoxops.config import AirbenchConfig, DataConfig, VictimConfig
from detoxops.data import ImageSet, load_splits
from detoxops.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
from detoxops.models import build_victim, load_classifier, predict, save_classifier, train_classifier

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, str | int]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def run_entry(name: str, train: ImageSet, test: ImageSet, args: argparse.Namespace, work: Path) -> dict:
    entry = work / name.partition("=")[0]
    if (entry / "metrics.json").is_file():
        return json.loads((entry / "metrics.json").read_text())
    entry.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    attack = None
    train_set, triggered = train, None
    if name != "clean":
        alias, _, attack_name = name.partition("=")  # "alias=attack": a variant with its own --attack-options
        attack_name = attack_name or alias
        options = json.loads(dict(o.split("=", 1) for o in args.attack_options).get(alias, "{}"))
        attack = registry.create(attack_name, target=0, poison_ratio=args.poison_ratio, seed=args.seed,
                                 image_size=train.images.shape[1], num_classes=train.num_classes, options=options)
        if attack.needs_fit and not attack.is_fitted:
            if attack.needs_model:
                surrogate = load_classifier(work / "clean" / "victim")
                attack.fit(train.images, train.labels, model=surrogate)
            else:
                attack.fit(train.images, train.labels)
            if hasattr(attack, "save_state"):
                attack.save_state(entry / "state")
        train_set, triggered = poison_datasets(attack, train, test)
        train_set.save(entry / "train")
        triggered.save(entry / "test")
    cfg = victim_config(args)
    model = build_victim(cfg, train.num_classes, 3, train.images.shape[1])
    t_train, cpu0, load0 = time.time(), time.process_time(), os.getloadavg()
    train_classifier(model, train_set, cfg, attack=attack if attack is not None and attack.kind == "loop" else None,
                     checkpoint_dir=entry / "checkpoint", progress=args.progress)
    train_seconds, cpu_seconds = time.time() - t_train, time.process_time() - cpu0
    metrics = {"attack": name.partition("=")[0], "kind": attack.kind if attack else "-"}
    for tta in args.tta:
        suffix = "" if tta == 0 else f"_tta{tta}"
        metrics["ca" + suffix] = clean_accuracy(predict(model, test.images, tta=tta), test.labels)
        if triggered is not None:
            pred = predict(model, triggered.images, tta=tta)
            metrics |= {"pa" + suffix: poisoned_accuracy(pred, triggered.original_labels),
                        "asr" + suffix: attack_success_rate(pred, attack.target)}
    if triggered is not None:
        metrics["num_poisoned"] = int(train_set.poisoned.sum())
    # seconds: the whole entry (poisoning, training, evaluation); train_*: training alone, resumed parts excluded
    metrics |= {"seconds": round(time.time() - t0, 1), "train_seconds": round(train_seconds, 1),
                "train_cpu_seconds": round(cpu_seconds, 1), "load_avg_start": [round(v, 2) for v in load0],
                "load_avg_end": [round(v, 2) for v in os.getloadavg()], "seed": args.seed}
    save_classifier(model, entry / "victim", meta=metrics)
    if args.export:
        metrics |= export_victim(model, name.partition("=")[0], train_set, test, triggered, attack, cfg, args)
    (entry / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def export_victim(model, name: str, train_set: ImageSet, test: ImageSet, triggered: ImageSet | None, attack,
                  cfg: VictimConfig, args: argparse.Namespace) -> dict:
    """Store the victim in fp16 under ``<export>/<name>`` with its training record, and measure CA / ASR of the
    stored (fp16) weights, which is what the experiments load."""
    record = {"command": args.command, "victim": cfg.model_dump(mode="json"), "train_hash": train_set.content_hash(),
              "test_hash": test.content_hash(), "attack_record": attack.describe() if attack is not None else None}
    dest = Path(args.export) / name
    save_classifier(model, dest, meta=record, half=True)
    stored = load_classifier(dest)
    out = {"ca_fp16": clean_accuracy(predict(stored, test.images), test.labels)}
    if triggered is not None:
        out["asr_fp16"] = attack_success_rate(predict(stored, triggered.images), attack.target)
    # the store's record: what these fp16 weights measured (ca / asr), the run's numbers beside them
    save_classifier(stored, dest, meta=record | {"attack": name, "ca": out["ca_fp16"], "asr": out.get("asr_fp16"),
                                                 "fp16_weights": True, "seed": args.seed}, half=True)
    return out


def victim_config(args: argparse.Namespace) -> VictimConfig:
    """The victim recipe the command line describes: ``small_cnn`` with BackdoorBench's recipe, or ``fast_cnn``
    with airbench94's (``--airbench-epochs`` overrides its 9.9 epochs)."""
    airbench = AirbenchConfig(precision=args.precision)
    if args.airbench_epochs is not None:
        airbench = airbench.model_copy(update={"epochs": args.airbench_epochs})
    return VictimConfig(arch=args.arch, width=args.width, epochs=args.epochs, seed=args.seed, lr=args.lr,
                        augment=not args.no_augment, threads=args.threads, airbench=airbench)


def _recipe_line(args: argparse.Namespace) -> str:
    if args.arch == "fast_cnn":
        ab = victim_config(args).airbench
        return (f"victim `fast_cnn` (airbench94's 1.97M-parameter net, widths {ab.widths}), airbench94 recipe "
                f"({ab.epochs} epochs, batch {ab.batch_size}, label smoothing {ab.label_smoothing}, lookahead, "
                f"alternating flip + {ab.translate}-px translate)")
    width = f" width {args.width}" if args.arch == "small_cnn" else ""
    return (f"victim `{args.arch}`{width}, {args.epochs} epochs, BackdoorBench recipe (SGD lr {args.lr}, momentum "
            f"0.9, wd 5e-4, cosine, {'no augmentation' if args.no_augment else 'crop + flip'})")


def _pct(row: dict, key: str) -> str:
    return f"{100 * row[key]:.1f}" if key in row else "–"


def write_reports(rows: list[dict], args: argparse.Namespace, command: str) -> None:
    results = {"machine": machine(), "command": command, "scale": {
        "train_per_class": args.train_per_class, "test_per_class": args.test_per_class, "victim": args.arch,
        "width": args.width, "epochs": args.epochs, "lr": args.lr, "poison_ratio": args.poison_ratio,
        "seed": args.seed, "recipe": victim_config(args).training_recipe}, "rows": rows}
    out_json = Path(args.out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1))
    clean_ca = next((r["ca"] for r in rows if r["attack"] == "clean"), float("nan"))
    extra = [t for t in args.tta if t != 0]
    tta_head = "".join(f" CA / PA / ASR with TTA {t} |" for t in extra)
    lines = [
        "# Attacks on CIFAR-10 at CPU scale",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {results['machine']['cpu']}, {results['machine']['cores']} threads, no GPU (machine shared with"
        " other jobs while this ran; each row's load average is in the JSON).",
        f"Scale: {args.train_per_class} train / {args.test_per_class} test images per class (stratified, seed "
        f"{args.seed}), {_recipe_line(args)}, poison ratio {args.poison_ratio}, target 0. CA / PA / ASR of the plain "
        "network (no test-time augmentation) unless a column says otherwise.",
        "",
        "| attack | kind | CA | ΔCA vs clean | PA | ASR |" + tta_head + " poisoned train samples | train s | seconds |",
        "|---|---|---|---|---|---|" + "---|" * len(extra) + "---|---|---|",
    ]
    for r in rows:
        delta = f"{100 * (r['ca'] - clean_ca):+.1f}" if r["attack"] != "clean" else "–"
        tta_cells = "".join(f" {_pct(r, f'ca_tta{t}')} / {_pct(r, f'pa_tta{t}')} / {_pct(r, f'asr_tta{t}')} |"
                            for t in extra)
        lines.append(f"| {r['attack']} | {r['kind']} | {_pct(r, 'ca')} | {delta} | {_pct(r, 'pa')} | {_pct(r, 'asr')} |"
                     f"{tta_cells} {r.get('num_poisoned', '–')} | {r.get('train_seconds', '–')} | {r['seconds']} |")
    out_md = Path(args.out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--attacks", nargs="+", default=["clean", "badnets", "blended", "sig", "wanet", "bpp"])
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--arch", default="small_cnn", choices=["small_cnn", "fast_cnn", "preact_resnet18"],
                    help="fast_cnn trains with airbench94's recipe (--epochs / --lr / --no-augment then unused)")
    ap.add_argument("--airbench-epochs", type=float, default=None, help="fast_cnn epochs (default 9.9)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="fast_cnn training precision (victim.airbench.precision)")
    ap.add_argument("--export", default=None, metavar="DIR",
                    help="also store each victim in fp16 under DIR/<attack> with its training record "
                    "(e.g. victims/cifar10-fast)")
    ap.add_argument("--tta", type=int, nargs="+", default=[0],
                    help="TTA levels to evaluate (0 plain, 2 mirror + translate); the first is the headline")
    ap.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (BackdoorBench: 0.01)")
    ap.add_argument("--no-augment", action="store_true",
                    help="train without crop + flip (a CPU-sized victim otherwise rarely learns a corner patch)")
    ap.add_argument("--attack-options", nargs="*", default=[], metavar="ALIAS=JSON",
                    help="options of an entry, e.g. badnets_natural='{\"color\": [120, 100, 80]}' with the entry "
                    "badnets_natural=badnets in --attacks")
    ap.add_argument("--poison-ratio", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=str(ROOT / "runs" / "shared" / "cifar10_cpu"))
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out-json", default=str(ROOT / "benchmarks" / "results" / "attack_table_cpu.json"))
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "results" / "attacks-cifar10-cpu.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/attack_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.command = command
    data_cfg = DataConfig(source=args.archive, image_size=None, train_per_class=args.train_per_class,
                          test_per_class=args.test_per_class, seed=args.seed, root=str(ROOT / "data"))
    splits = load_splits(args.archive, data_cfg, progress=args.progress)
    train, test = splits["train"], splits["test"]
    work = Path(args.work)
    if not (work / "clean_test").exists():  # the clean test split the defense benchmarks score CA on
        test.save(work / "clean_test")
    rows = []
    names = ["clean"] + [a for a in args.attacks if a != "clean"]  # the clean victim first: surrogates need it
    for name in names:
        try:
            rows.append(run_entry(name, train, test, args, work))
        except Exception as exc:  # one failing attack must not lose the others' rows
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(json.dumps(rows[-1]), flush=True)
        write_reports(rows, args, command)
        # rewritten after every entry, so the defense engineers see what exists while the table is still running
        (work / "README.txt").write_text(
            "CIFAR-10 CPU-scale victims made by benchmarks/attack_table.py\n"
            f"command: {command}\n<name>/train, <name>/test: ImageSet.save; <name>/victim: save_classifier\n"
            + "\n".join(json.dumps(r) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
