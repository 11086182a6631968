"""DataElixir on CIFAR-10 at 1,000 training images per class with fast_cnn victims (issue #21).

Per (attack, seed): the stratified ``--train-per-class`` subset of the training split (``data.seed`` = seed), poisoned
by :func:`detoxops.operations.poison` (``params.yaml``'s attack defaults, target 0, poison ratio 0.1, ``attack.seed``
= seed), a fast_cnn victim trained on it by :func:`detoxops.operations.train_victim` (resumable checkpoints; CA on
the clean test split, PA / ASR on its triggered non-target version), DataElixir by
:func:`detoxops.operations.sanitize` with ``-s dataelixir.X=...`` (resumable shards), and a fast_cnn retrained on
the purified set (ACC / ASR). Next to it, once per seed, the reference: a fast_cnn trained on the same subset
without poison (the ``clean`` entry's victim, and the ACC a retrained model is compared with).

The work folder keeps every stage (``<work>/seed<S>/<attack>/`` holds the poisoned set and victim; the DataElixir
part lives under ``elixir-<key>/``, keyed by the ``dataelixir`` settings, so several settings share one victim; a new one starts with hard links to
the other folders' candidate shards, so a setting that changes only stages 2-4 computes no candidate). A
finished entry (``elixir-<key>/result.json``) is skipped; an interrupted one resumes stage by stage. The table
(``--results/<name>.json``, committed) is rewritten after every entry; an entry whose ``elixir-<key>/`` folder is
gone (``runs/`` does not travel between machines) is taken from that table when it holds the row for the same
settings and purifier, and rows of other attacks / seeds in it are kept.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/dataelixir_cifar10_fast.py --seed 1 --attacks badnets \
        -s dataelixir.T=80 -s dataelixir.rounds=2 -s dataelixir.sampler=ddim -s dataelixir.ddim_stride=10 \
        -s dataelixir.keep_last=4 --name validation_seed1

Settings are chosen on a validation seed (another seed's poisoned subset) and then run once on the held-out seed.

**A whole seed at a time (``dataelixir.noise: per_image``).** The entries of one seed share 90 % of their images
(the poison replaces 10 % of the same subset), and with per-image noise an image's purification is the same in
every entry: stored once in ``dataelixir.purification_cache`` (excluded from the entry key: it does not change
results), every later entry only scores it with its own victim. Two processes fill that store first, each for
every attack's even or odd candidate shards, so no image is purified twice (the part-0 process then trains the
seed's reference model); then the entries run in two processes, purifying only what no other entry had.
``benchmarks/dataelixir_cifar10_fast_seed.sh SEED NAME`` issues exactly these commands (WaNet and BPP with the
victim recipe's augmentation in their own work folder), e.g. phase 1:

    S="-s dataelixir.noise=per_image -s dataelixir.purification_cache=runs/purification-cache"
    python benchmarks/dataelixir_cifar10_fast.py --seed 2 $S --purify-only --part 0/2 --name N &
    python benchmarks/dataelixir_cifar10_fast.py --seed 2 $S --purify-only --part 1/2 --name N; wait
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from detoxops.config import Params, load_params
from detoxops.data import ImageSet, load_source
from detoxops.defenses.dataelixir import module_fingerprint
from detoxops.fileio import atomic_write_text
from detoxops.metrics import attack_success_rate, detection_rates, percent, poisoned_accuracy
from detoxops.models import load_classifier, predict
from detoxops.operations import dataelixir_diffusion, load_chosen_purifier, poison, sanitize, train_victim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _record  # noqa: E402
from diffusion_throughput import machine_info  # noqa: E402

DEFAULT_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
ATTACKS = ["clean", "badnets", "blended", "sig", "wanet", "bpp", "ftrojan", "ssba"]


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Stages:
    """Wall time and load average of each stage an entry actually ran (a resumed stage is not timed again)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.load: dict[str, list[float]] = {}

    def run(self, name: str, fn):
        start, load0 = time.perf_counter(), load_avg()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.load[name] = [load0, load_avg()]
        print(f"  {name}: {self.seconds[name]} s (load {load0} -> {self.load[name][1]})", flush=True)
        return out


def seed_splits(base: Params, source: str, seed: int, *, train_per_class: int = 1000, test_per_class: int | None = None,
                image_size: int | None = None, progress: bool = False) -> dict[str, ImageSet]:
    """The seed's data: the stratified ``train_per_class`` subset of ``source``'s training split (``data.seed`` =
    ``seed``) and its test split, cached under the project's ``data/`` — what every entry of a seed is made from."""
    data_cfg = base.data.model_copy(update={"source": source, "image_size": image_size, "seed": seed,
                                            "train_per_class": train_per_class, "test_per_class": test_per_class,
                                            "root": str(ROOT / "data")})
    return load_source(source, data_cfg, progress=progress)


def seed_params(base: Params, seed: int, attack: str) -> Params:
    """The entry's params: data, attack, victim and DataElixir seeds = ``seed`` unless ``-s`` set them."""
    upd = {
        "data": base.data.model_copy(update={"seed": seed}),
        "attack": base.attack.model_copy(update={"name": attack if attack != "clean" else base.attack.name,
                                                 "seed": seed}),
        "victim": base.victim.model_copy(update={"arch": "fast_cnn", "seed": seed}),
    }
    return base.model_copy(update=upd)


LATER_FIELDS = {"mixed": "mode", "purify": "flagged", "relabel_images": "dataset", "relabel": "suspicious",
                "relabel_view": "candidate", "distant_mads": 1.0, "target_rounds": 0, "relabel_init": "scratch",
                "noise": "per_shard", "relabelled_image": "chosen"}
"""``dataelixir`` fields added after entries were stored, with the value every earlier entry ran with (their first
default; ``mixed``, ``purify`` and ``target_rounds`` come from the profile since 2026-12-07): in an entry's key
only when the resolved value differs from it."""


def elixir_key(params: Params, purifier_fp: str | None = None, image_size: int = 32) -> str:
    """What the DataElixir part of an entry depends on beyond the victim: its settings, the relabel recipe and the
    purifier (its weights' fingerprint; ``None`` gives the key of entries made before the purifier was part of it)."""
    # the concrete settings (profile resolved at the data's size, CIFAR-10's 32 px, its name left out), so a folder's
    # key depends on what ran, not on how it was asked for: entries made before dataelixir.profile existed keep theirs
    # (``purifier``, the setting, is left out too: the key holds the weights' fingerprint)
    # (``purification_cache`` too: a folder of stored purifications changes where work is found, not what it gives)
    elixir = params.dataelixir.resolved(image_size).model_dump(mode="json",
                                                               exclude={"profile", "purifier", "purification_cache"})
    for name, first in LATER_FIELDS.items():  # fields added later count only when set: older entries keep their keys
        if elixir.get(name) == first:
            del elixir[name]
    spec = {"dataelixir": elixir, "victim": params.victim.model_dump(mode="json")}
    if purifier_fp is not None:
        spec["purifier"] = purifier_fp
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def stored_purifiers(elixir_dir: Path) -> set[str]:
    """Fingerprints of the purifiers whose candidate shards an elixir folder holds."""
    return {json.loads(f.read_text()).get("purifier") for f in elixir_dir.glob("work/candidates/*/fingerprint.json")}


def elixir_folder(entry: Path, params: Params, purifier_fp: str, image_size: int = 32) -> Path:
    """The entry's DataElixir folder for these settings and this purifier. A folder of the older key (settings
    only) is taken over — renamed — when its candidates were made with this purifier; one made with another
    purifier is left alone, so a new default purifier never reuses another purifier's results."""
    folder = entry / f"elixir-{elixir_key(params, purifier_fp, image_size)}"
    legacy = entry / f"elixir-{elixir_key(params, None, image_size)}"
    if not folder.exists() and legacy.is_dir() and stored_purifiers(legacy) == {purifier_fp}:
        legacy.rename(folder)
        print(f"{legacy.name} (made with this purifier) renamed to {folder.name}", flush=True)
    return folder


def share_candidates(entry: Path, elixir_dir: Path) -> list[str]:
    """Hard-link the candidate work folders of the entry's other ``elixir-*`` folders into a new ``elixir_dir``: a
    setting that differs only in stages 2-4 (``mixed``, ``purify``, relabelling, ...) finds its candidates made
    (the shard store keys them by what they depend on and drops the ones it does not use; shards are written by
    rename, so neither folder can change the other's files). Returns the work folders linked."""
    shared = []
    for sibling in sorted(entry.glob("elixir-*")):
        if sibling == elixir_dir:
            continue
        for folder in sorted((sibling / "work" / "candidates").glob("*")):
            dest = elixir_dir / "work" / "candidates" / folder.name
            if folder.is_dir() and not dest.exists():
                shutil.copytree(folder, dest, copy_function=os.link)
                shared.append(f"{sibling.name}/{folder.name}")
    return shared


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (created): two processes of one seed (``--part``, attack lists side by side) make
    a stage the other also needs (the reference model, an entry's poisoned set) once, the second one waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def trained(folder: Path, fn, stages: Stages, name: str):
    """A classifier folder: loaded when it is there, else trained by ``fn`` (resumable by its checkpoint dir)."""
    with locked(folder.parent / f".{folder.name}.lock"):
        if not (folder / "classifier.json").is_file():
            stages.run(name, fn)
    return load_classifier(folder)


def poisoned_set(entry: Path, params: Params, splits: dict[str, ImageSet], args, stages: Stages):
    """The entry's poisoned training and triggered test sets and its attack (made once, under a lock)."""
    from detoxops.attacks import registry

    poisoned_dir = entry / "poisoned"
    with locked(entry / ".poisoned.lock"):
        if not (poisoned_dir / "attack.json").is_file():
            stages.run("poison", lambda: poison(splits["train"], splits["test"], params.attack, out=poisoned_dir,
                                                overwrite=True, source=str(args.source), progress=args.progress))
    return ImageSet.load(poisoned_dir / "train"), ImageSet.load(poisoned_dir / "test"), registry.from_record(poisoned_dir)


def scores(model, clean_test: ImageSet, triggered: ImageSet | None, target: int) -> dict[str, float]:
    out = {"acc": float((predict(model, clean_test.images) == clean_test.labels).mean())}
    if triggered is not None:
        pred = predict(model, triggered.images)
        out |= {"asr": attack_success_rate(pred, target), "pa": poisoned_accuracy(pred, triggered.original_labels)}
    return out


def reference_model(seed_dir: Path, splits: dict[str, ImageSet], params: Params, stages: Stages, progress: bool):
    """fast_cnn on the seed's subset without poison (once per seed)."""
    folder = seed_dir / "reference"
    return trained(folder, lambda: train_victim(
        splits["train"], params.victim, folder, clean_test=splits["test"], checkpoint_dir=seed_dir / "reference.ckpt",
        record={"seed": params.victim.seed, "benchmark": "dataelixir_cifar10_fast reference"}, progress=progress),
        stages, "reference_train")


def detection(train: ImageSet, purified: ImageSet) -> dict:
    """DataElixir's detection numbers for one sanitised set. ``tpr`` is over all truly poisoned samples, as the
    reference defines it; ``tpr_label_changing`` is over the poisoned samples whose label the attack changed. They
    differ because BackdoorBench draws dirty-label poison from all classes (about 10 % of it already has the target
    label, so restoring its label changes nothing and it can never count as detected), while DataElixir's own code
    excludes the target class: its TPR is the second number."""
    tpr, fpr = detection_rates(train.labels, purified.labels, train.poisoned)
    poisoned_flags = np.asarray(train.poisoned, dtype=bool)
    label_changing = poisoned_flags & (train.labels != train.original_labels)
    flagged = purified.labels != train.labels
    restored = purified.labels == train.original_labels
    share = lambda mask, of: float(mask[of].mean()) if of.any() else None  # noqa: E731
    return {
        "tpr": None if tpr != tpr else tpr, "fpr": None if fpr != fpr else fpr,
        "label_changing_poisoned": int(label_changing.sum()),
        "tpr_label_changing": share(flagged, label_changing),
        # labels of the purified set equal to the true (pre-attack) labels: over all samples, and over the truly
        # poisoned ones (how many of the poison got its own label back; for clean-label attacks it never lost it)
        "label_acc": float(restored.mean()),
        "label_acc_poisoned": share(restored, poisoned_flags),
    }


def _entry_train(attack: str, entry: Path, splits: dict[str, ImageSet]) -> ImageSet:
    return splits["train"] if attack == "clean" else ImageSet.load(entry / "poisoned" / "train")


def recorded_rows(results_file: Path) -> dict[tuple, dict]:
    """The rows of a table this benchmark wrote before, by (attack, seed, elixir key, purifier): what survives when
    the work folder does not (``runs/`` is not committed; the table is)."""
    if not results_file.is_file():
        return {}
    rows = json.loads(results_file.read_text()).get("rows", [])
    return {(r["attack"], r["seed"], r.get("elixir_key"), r.get("purifier")): r for r in rows}


def run_entry(attack: str, seed: int, args, base: Params, purifier, splits: dict[str, ImageSet], work: Path,
              recorded: dict[tuple, dict] | None = None) -> dict:
    params = seed_params(base, seed, attack)
    seed_dir = work / f"seed{seed}"
    entry = seed_dir / attack
    purifier_fp = module_fingerprint(purifier.unet)
    size = int(splits["train"].image_shape[0])
    elixir_dir = elixir_folder(entry, params, purifier_fp, size)
    done = elixir_dir / "result.json"
    row = (recorded or {}).get((attack, seed, elixir_dir.name, purifier_fp))
    if row is not None and not elixir_dir.exists():  # its work is gone (another machine): the committed row stands
        print(f"{attack} seed {seed}: done (recorded in the table; no work folder)", flush=True)
        return row
    if done.is_file():
        print(f"{attack} seed {seed}: done ({done})", flush=True)
        row = json.loads(done.read_text())
        upgraded = dict(row)
        if "tpr_label_changing" not in row:  # an entry finished before that column existed: computed from its sets
            upgraded |= detection(_entry_train(attack, entry, splits), ImageSet.load(elixir_dir / "purified"))
        upgraded |= {"purifier": purifier_fp, "elixir_key": elixir_dir.name}  # entries older than the purifier key
        if upgraded != row:
            atomic_write_text(done, json.dumps(upgraded, indent=1, default=float))
        return upgraded
    print(f"{attack} seed {seed}: {entry}", flush=True)
    stages = Stages()
    entry.mkdir(parents=True, exist_ok=True)
    target = params.attack.target
    if attack == "clean":
        train, triggered, attack_obj = splits["train"], None, None
    else:
        train, triggered, attack_obj = poisoned_set(entry, params, splits, args, stages)
        target = attack_obj.target
    reference = reference_model(seed_dir, splits, params, stages, args.progress)
    if attack == "clean":
        victim = reference
    else:
        victim_dir = entry / "victim"
        victim = trained(victim_dir, lambda: train_victim(
            train, params.victim, victim_dir, attack=attack_obj, clean_test=splits["test"], triggered=triggered,
            checkpoint_dir=entry / "victim.ckpt", record={"seed": seed, "attack": attack},
            progress=args.progress), stages, "victim_train")

    if not elixir_dir.exists() and (shared := share_candidates(entry, elixir_dir)):
        print(f"{attack} seed {seed}: candidates of {', '.join(shared)} linked into {elixir_dir.name}", flush=True)
    elixir_dir.mkdir(parents=True, exist_ok=True)
    purified_dir = elixir_dir / "purified"
    summary_file = elixir_dir / "sanitize.json"
    if not summary_file.is_file():
        outcome = stages.run("sanitize", lambda: sanitize(
            train, victim, params, out=purified_dir, purifier=purifier, workdir=elixir_dir / "work",
            overwrite=True, progress=args.progress))
        summary_file.write_text(json.dumps({**outcome.summary(), "anomaly_index": outcome.anomaly}, indent=1,
                                           default=float))
    summary = json.loads(summary_file.read_text())
    purified = ImageSet.load(purified_dir)
    poisoned_flags = np.asarray(train.poisoned, dtype=bool)

    retrained_dir = elixir_dir / "retrained"
    if (np.array_equal(purified.images, splits["train"].images) and np.array_equal(purified.labels, splits["train"].labels)):
        # nothing changed on the unpoisoned subset (no target): retraining it with the same recipe and seed gives
        # the reference bit for bit (measured on seed 0's clean entry), so it is not trained a second time
        retrained = reference
    else:
        retrained = trained(retrained_dir, lambda: train_victim(
            purified, params.victim, retrained_dir, clean_test=splits["test"],
            checkpoint_dir=elixir_dir / "retrained.ckpt", record={"seed": seed, "attack": attack, "purified": True},
            progress=args.progress), stages, "retrain")

    row = {
        "attack": attack, "seed": seed, "n": len(train), "poisoned": int(poisoned_flags.sum()),
        "true_target": None if attack == "clean" else int(target),
        "target_labels": summary["target_labels"],
        "target_found": None if attack == "clean" else summary["target_labels"] == [int(target)],
        **detection(train, purified),
        "flagged": summary["flagged"], "sets": summary["sets"],
        "victim": scores(victim, splits["test"], triggered, target),
        "reference": scores(reference, splits["test"], triggered, target),
        "retrained": scores(retrained, splits["test"], triggered, target),
        "anomaly_index": summary.get("anomaly_index"),
        "dataelixir": params.dataelixir.resolved(size).model_dump(mode="json"),  # what DataElixir ran
        "elixir_key": elixir_dir.name, "purifier": purifier_fp,
        "stage_seconds": stages.seconds, "stage_load": stages.load,
    }
    atomic_write_text(done, json.dumps(row, indent=1, default=float))
    print(json.dumps({k: row[k] for k in ("attack", "seed", "target_labels", "tpr", "fpr", "label_acc",
                                          "victim", "reference", "retrained", "stage_seconds")}, default=float),
          flush=True)
    return row


def purify_only(seed: int, args, base: Params, purifier, splits: dict[str, ImageSet], work: Path,
                recorded: dict[tuple, dict] | None = None) -> dict:
    """``--purify-only --part I/N``: for every attack of ``--attacks`` not finished yet (its row in ``--name``'s
    table or its ``result.json``), the entry's poisoned set (made if missing) and the purification of its candidate
    shards ``k`` with ``k % N == I`` into the purification cache; part 0 then trains the seed's reference model. No
    victim is involved. Returns the images purified per attack."""
    from detoxops.defenses.dataelixir import DataElixir
    from detoxops.operations.sanitize import relabel_config

    part, parts = args.part
    seed_dir = work / f"seed{seed}"
    purifier_fp = module_fingerprint(purifier.unet)
    size = int(splits["train"].image_shape[0])
    stages = Stages()
    purified = {}
    for attack in args.attacks:
        params = seed_params(base, seed, attack)
        key = f"elixir-{elixir_key(params, purifier_fp, size)}"
        if (attack, seed, key, purifier_fp) in (recorded or {}) or (seed_dir / attack / key / "result.json").is_file():
            print(f"  {attack} seed {seed}: entry finished, nothing to purify", flush=True)
            continue
        if attack == "clean":
            train = splits["train"]
        else:
            train = poisoned_set(seed_dir / attack, params, splits, args, stages)[0]
        elixir = DataElixir(purifier, params.dataelixir, relabel_config(params))
        shards = [k for k in range(len(elixir.shard_bounds(len(train)))) if k % parts == part]
        purified[attack] = stages.run(f"purify_{attack}", lambda e=elixir, t=train, s=shards: e.purify(
            t, seed_dir, shard_ids=s, progress=args.progress))  # (the work folder is unused: the cache is set)
        print(f"  {attack} seed {seed}, shards {shards}: {purified[attack]} images purified", flush=True)
    if part == 0:
        reference_model(seed_dir, splits, seed_params(base, seed, "clean"), stages, args.progress)
    return {"seed": seed, "part": f"{part}/{parts}", "purified": purified, "stage_seconds": stages.seconds,
            "stage_load": stages.load}


def parse_part(text: str) -> tuple[int, int]:
    try:
        part, parts = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part takes I/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= part < parts:
        raise argparse.ArgumentTypeError(f"--part {text}: need 0 <= I < N")
    return part, parts


def markdown_table(report: dict) -> str:
    pct = lambda v: "–" if v is None else f"{percent(v):.1f}"  # noqa: E731
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['torch_threads']} torch thread(s); load average at "
        f"start {report['machine']['load_average_at_start']}; code {report['code_version']}.",
        "",
        "| attack | seed | n | poisoned | target found | detected | TPR (all poisoned / label-changing) | FPR "
        "| label acc (all / poisoned) | victim ACC / ASR | unpoisoned ACC | retrained ACC / ASR | stage seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        v, ref, rt = r["victim"], r["reference"], r["retrained"]
        found = "– (clean)" if r["true_target"] is None else ("yes" if r["target_found"] else "no")
        secs = ", ".join(f"{k} {s:.0f}" for k, s in r["stage_seconds"].items()) or "(resumed)"
        lines.append(
            f"| {r['attack']} | {r['seed']} | {r['n']} | {r['poisoned']} | {found} | {r['target_labels'] or 'none'} "
            f"| {pct(r['tpr'])} / {pct(r.get('tpr_label_changing'))} | {pct(r['fpr'])} | {pct(r['label_acc'])} / {pct(r['label_acc_poisoned'])} "
            f"| {pct(v['acc'])} / {pct(v.get('asr'))} | {pct(ref['acc'])} | {pct(rt['acc'])} / {pct(rt.get('asr'))} "
            f"| {secs} |"
        )
    lines += ["", "TPR over all poisoned samples (the reference's definition) / over those whose label the attack "
              "changed: BackdoorBench draws dirty-label poison from every class, so about 10 % of it already carries "
              "the target label and cannot be detected by a label change; DataElixir's own code excludes the target "
              "class, so its TPR is the second number."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(DEFAULT_ARCHIVE), help="data source (the CIFAR-10 JPEG archive)")
    ap.add_argument("--attacks", nargs="+", default=ATTACKS, help=f"entries (default: {' '.join(ATTACKS)})")
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="data / attack / victim seeds (one per run)")
    ap.add_argument("--image-size", type=int, default=None, help="resize to NxN (default: keep, CIFAR-10's 32)")
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=None, help="default: the whole test split")
    ap.add_argument("--purifier", default=None, help="purifier folder or shipped name (default: DataElixir's, "
                    "detoxops.operations.dataelixir_purifier: cifar10-32-v2 with the cpu_cifar10 profile)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="params override (dotted)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "dataelixir_cifar10_fast"))
    ap.add_argument("--name", default="dataelixir_cifar10_fast", help="result file stem")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--docs-results", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--purify-only", action="store_true", help="only fill the purification cache (needs -s "
                    "dataelixir.noise=per_image and -s dataelixir.purification_cache=DIR), for the shards of --part")
    ap.add_argument("--part", type=parse_part, default=(0, 1), help="with --purify-only: I/N, the candidate shards "
                    "k with k %% N == I of every attack (part 0 also trains the reference model)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        from detoxops.attacks import registry

        missing = [a for a in unknown if a not in registry.available()]
        if missing:
            ap.error(f"unknown attack(s): {', '.join(missing)}")
    base = load_params(ROOT / "params.yaml", args.overrides, announce=False)
    if args.purify_only and (base.dataelixir.noise != "per_image" or not base.dataelixir.purification_cache):
        ap.error("--purify-only fills the shared purification cache: add -s dataelixir.noise=per_image "
                 "-s dataelixir.purification_cache=DIR")
    machine = machine_info(torch.device("cpu"))
    work = Path(args.work)
    rows, purifier = [], None
    results_file = Path(args.results) / f"{args.name}.json"
    recorded = recorded_rows(results_file)
    requested = {(attack, seed) for seed in args.seed for attack in args.attacks}
    for seed in args.seed:
        splits = seed_splits(base, args.source, seed, train_per_class=args.train_per_class,
                             test_per_class=args.test_per_class, image_size=args.image_size, progress=args.progress)
        if purifier is None:
            size = int(splits["train"].image_shape[0])
            purifier = load_chosen_purifier(args.purifier, dataelixir_diffusion(base, size), size)
        if args.purify_only:
            print(json.dumps(purify_only(seed, args, base, purifier, splits, work, recorded)), flush=True)
            continue
        for attack in args.attacks:
            rows.append(run_entry(attack, seed, args, base, purifier, splits, work, recorded))
            # after every entry, so a run cut short (or a machine lost) leaves the finished rows to commit; rows
            # this run does not redo (other attacks or seeds under the same name) stay, read again at each write so
            # that runs of other entries under one name, side by side, keep each other's rows
            kept = [r for r in recorded_rows(results_file).values() if (r["attack"], r["seed"]) not in requested]
            write_report(args, argv, machine, [*rows, *kept])
    return 0


def write_report(args, argv: list[str] | None, machine: dict, rows: list[dict]) -> None:
    report = {"command": _record.command(__file__, argv), "code_version": _record.code_version(), "machine": machine,
              "load_average_at_end": load_avg(), "train_per_class": args.train_per_class, "rows": rows}
    for folder, text in ((args.results, json.dumps(report, indent=1, default=float)),
                         (args.docs_results, markdown_table(report))):
        Path(folder).mkdir(parents=True, exist_ok=True)
        suffix = ".json" if folder == args.results else ".md"
        path = Path(folder) / f"{args.name}{suffix}"
        atomic_write_text(path, text)
        print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
