"""The ingestion check on a 1,000-per-class CIFAR-10 folder dataset, end to end and timed (issue #21: "finishes in
≤ 90 minutes on this CPU with the default settings and quarantines the poisoned one").

    OMP_NUM_THREADS=1 python benchmarks/ingestion_check_cifar10.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --attack badnets --seed 1 --note "one thread, victim store training on the other core"

Builds the dataset a user would drop in: the stratified ``--per-class`` subset of the archive's training split
(``data.seed`` = ``--seed``), poisoned by ``params.yaml``'s attack (``--attack``; ``clean`` = not poisoned) exactly as
``benchmarks/dataelixir_cifar10_fast.py`` poisons it, plus ``--test-per-class`` clean test images, written as a
``train/<class>/<n>.png`` + ``test/<class>/<n>.png`` tree (PNG: lossless, so the files hold the pixels the attack
made). Then runs ``python -m flows.ingestion_check --source <tree>`` as a user would, with params.yaml's defaults
(only the places it writes to are pointed into ``--work``: ``data.root``, ``tracking.*``; ``-s`` adds overrides),
and appends to ``--json`` the wall time, the exit status (0 passed, 3 quarantined, 1 failed), the check's record
(target labels, per-stage seconds, the DataElixir settings that ran), TPR / FPR against the known poison, the
machine and its load. Every run starts from an empty ``--work/<entry>`` (nothing cached is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import _record  # noqa: E402

EXIT_NAMES = {0: "passed", 3: "quarantined", 1: "failed"}


def write_tree(splits: dict, folder: Path) -> dict[str, int]:
    """``splits`` (name → ImageSet) as ``<folder>/<split>/<class>/<n>.png``, written to a temporary sibling and
    renamed, so a tree is either whole or absent. Returns the image count per split."""
    from PIL import Image

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for split, images in splits.items():
        for name in images.class_names:
            (tmp / split / name).mkdir(parents=True, exist_ok=True)
        width = len(str(len(images)))
        for i, (image, label) in enumerate(zip(images.images, images.labels, strict=True)):
            Image.fromarray(image).save(tmp / split / images.class_names[int(label)] / f"{i:0{width}d}.png")
        counts[split] = len(images)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return counts


def check_record(data_root: Path) -> dict | None:
    """The newest ``*.check.json`` marker the check left under ``data_root`` (None when it wrote none)."""
    markers = sorted(data_root.rglob("*.check.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(markers[-1].read_text()) if markers else None


def detection_against_truth(record: dict | None, train) -> dict:
    """TPR / FPR of the purified version the check stored (quarantined runs only), against the known poison of
    ``train`` (the ImageSet the tree was written from): ``dataelixir_cifar10_fast.detection``'s numbers (a sample is
    detected when its label changed; ``tpr`` over all poison, ``tpr_label_changing`` over the poison whose label the
    attack changed, ``label_acc`` / ``label_acc_poisoned`` the share given its true label back), rounded to 4
    places."""
    if not record or not record.get("purified_version"):
        return {}
    from dataelixir_cifar10_fast import detection
    from detoxops.data import load_version

    purified = load_version(record["purified_version"])["train"]
    if len(purified) != len(train):
        return {"detection_note": f"purified set has {len(purified)} samples, the tree {len(train)}"}
    # the tree was read in (class, file name) order, which is the order it was written in within a class;
    # source_index is each sample's position in that order
    tree_order = np.lexsort((np.arange(len(train)), np.asarray(train.labels)))
    rates = detection(train.subset(tree_order[np.asarray(purified.source_index)]), purified)
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in rates.items()}


def build_train(args, base):
    """The poisoned (or clean) training subset and the clean test subset the tree is written from: deterministic in
    ``--seed``, so ``--rescore`` rebuilds exactly the set an earlier run wrote."""
    from detoxops.data import load_source
    from detoxops.operations import poison

    entry = args.work / f"{args.attack}-seed{args.seed}-{args.per_class}pc"
    data_cfg = base.data.model_copy(update={"source": args.data, "image_size": None, "seed": args.seed,
                                            "train_per_class": args.per_class, "test_per_class": args.test_per_class,
                                            "root": str(entry / "source-cache")})
    splits = load_source(args.data, data_cfg, progress=False)
    train = splits["train"]
    if args.attack != "clean":
        attack_cfg = base.attack.model_copy(update={"name": args.attack, "seed": args.seed})
        train = poison(splits["train"], splits["test"], attack_cfg, progress=False).train
    return train, splits["test"]


def rescore(args, base, entry: Path) -> int:
    """Re-score the newest stored entry of this ``--work`` folder against the rebuilt truth (new detection columns
    for an entry whose check already ran); the check is not run again."""
    from detoxops.fileio import atomic_write_text

    log = str(entry / "check.log")
    entries = json.loads(args.json.read_text()) if args.json.is_file() else []
    matches = [i for i, e in enumerate(entries) if e.get("log") == log]
    record = check_record(entry / "dvc" / "data") if (entry / "dvc" / "data").is_dir() else None
    if not matches or record is None:
        print(f"--rescore: no entry with log {log} in {args.json}, or no check record under {entry}", file=sys.stderr)
        return 1
    train, _ = build_train(args, base)
    rates = detection_against_truth(record, train)
    entries[matches[-1]] = {**entries[matches[-1]], **rates}
    atomic_write_text(args.json, json.dumps(entries, indent=1, default=str))
    print(json.dumps(rates))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 class-folder archive (train/ and test/)")
    ap.add_argument("--attack", default="badnets", help="params.yaml attack to poison with, or clean")
    ap.add_argument("--seed", type=int, default=1, help="subset and attack seed")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="extra check override")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "ingestion_check_cifar10")
    ap.add_argument("--note", default="", help="free text stored with the entry (machine load, ...)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/ingestion_check_cifar10.json")
    ap.add_argument("--rescore", action="store_true",
                    help="do not run the check: re-score the stored entry of this --work/--attack/--seed")
    args = ap.parse_args(argv)

    from detoxops.config import load_params
    from detoxops.fileio import atomic_write_text

    entry = args.work / f"{args.attack}-seed{args.seed}-{args.per_class}pc"
    base = load_params(ROOT / "params.yaml", announce=False)
    if args.rescore:
        return rescore(args, base, entry)
    shutil.rmtree(entry, ignore_errors=True)
    train, test = build_train(args, base)
    counts = write_tree({"train": train, "test": test}, entry / "tree")

    overrides = [f"data.root={entry / 'dvc' / 'data'}", f"tracking.runs_dir={entry / 'runs'}",
                 f"tracking.mlflow_uri=sqlite:///{entry / 'mlflow.db'}", *args.overrides]
    cmd = [sys.executable, "-m", "flows.ingestion_check", "--source", str(entry / "tree"),
           "--dvc-root", str(entry / "dvc"), *[a for o in overrides for a in ("--set", o)]]
    (entry / "dvc").mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=entry / "dvc", check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=entry / "dvc", check=True)
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    with open(entry / "check.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    record = check_record(entry / "dvc" / "data")
    row = {
        "attack": args.attack, "seed": args.seed, "per_class": args.per_class, "images": counts,
        "poisoned": int(np.asarray(train.poisoned).sum()), "true_target": None if args.attack == "clean" else
        int(base.attack.target),
        "exit": rc, "verdict": EXIT_NAMES.get(rc, f"exit {rc}"), "wall_s": round(wall, 1),
        "within_90_min": wall <= 90 * 60,
        "target_labels": (record or {}).get("target_labels"), "stages_s": (record or {}).get("stages"),
        "dataelixir": (record or {}).get("dataelixir"),
        **detection_against_truth(record, train),
        "threads": os.environ.get("OMP_NUM_THREADS", "torch default"), "load_before": load_before,
        "load_after": list(os.getloadavg()), "note": args.note, "log": str(entry / "check.log"),
        "command": _record.command(__file__, argv), "check_command": " ".join(cmd[1:]),
        "code_version": _record.code_version(), "machine": _record.machine(),
    }
    entries = json.loads(args.json.read_text()) if args.json.is_file() else []
    atomic_write_text(args.json, json.dumps([*entries, row], indent=1, default=str))
    print(json.dumps({k: row[k] for k in ("verdict", "wall_s", "target_labels", "tpr", "tpr_label_changing", "fpr")
                      if k in row}))
    return 0 if rc in (0, 3) else 1


if __name__ == "__main__":
    raise SystemExit(main())
