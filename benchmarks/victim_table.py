"""The attack table of the committed victim store: every victim's CA / PA / ASR (without and with TTA), its cost
against the clean victim, and its training time, read from the training records `dvc repro victims/dvc.yaml`
leaves in ``victims/<name>/<attack>/classifier.json`` (nothing is re-evaluated; the numbers are the stages').

    python benchmarks/victim_table.py --name cifar10-fast \
        --out-json benchmarks/results/victim_store_cifar10_fast.json --out-md docs/results/victims-cifar10-fast-attacks.md

"current recipe" says whether the victim was trained with today's ``fast_train.py`` / ``fast_cnn.py`` (the md5 its
stage recorded in ``victims/dvc.lock`` against the files now): after a recipe change the store is retrained stage by
stage, and until then the table mixes recipes.

Issue #19's bounds are checked per row: dirty-label attacks ASR >= 90 and CA within 2 points of the clean victim,
loop attacks ASR >= 85, clean-label attacks (SIG, LC) report their CA cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

from _record import command as record_command

CLEAN_LABEL = {"sig", "lc"}
LOOP = {"wanet", "bpp", "inputaware", "lira"}


RECIPE_FILES = ("src/detoxops/models/fast_train.py", "src/detoxops/models/fast_cnn.py")


def recipe_current(store: Path, stage: str, root: Path) -> bool | None:
    """Whether ``stage`` of ``store/dvc.lock`` (``attack@X`` also finds ``attack_lossless@X`` and
    ``attack_recipe_augment@X``) was run with the recipe files as they are now (None: not in the lock)."""
    import yaml

    lock = store / "dvc.lock"
    if not lock.is_file():
        return None
    stages = yaml.safe_load(lock.read_text()).get("stages", {})
    if stage not in stages and stage.startswith("attack@"):  # victims.lossless_attacks / recipe_augment_attacks
        name = stage.removeprefix("attack@")
        stage = next((f"{group}@{name}" for group in ("attack_lossless", "attack_recipe_augment")
                      if f"{group}@{name}" in stages), stage)
    deps = (stages.get(stage) or {}).get("deps")
    if deps is None:
        return None
    recorded = {d["path"]: d.get("md5") for d in deps}
    return all(recorded.get(f) == hashlib.md5((root / f).read_bytes()).hexdigest() for f in RECIPE_FILES
               if f in recorded)


def rows(store: Path, name: str) -> list[dict]:
    out = []
    for config in sorted((store / name).glob("*/classifier.json")):
        meta = json.loads(config.read_text()).get("meta", {})
        metrics = meta.get("metrics") or {"ca": meta.get("ca"), "ca_tta2": meta.get("ca_tta2", meta.get("ca_tta2_fp32"))}
        history = meta.get("history") or {}
        seconds = history.get("seconds") or []
        out.append({
            "attack": config.parent.name,
            "ca": metrics.get("ca"), "pa": metrics.get("pa"), "asr": metrics.get("asr"),
            "ca_tta2": metrics.get("ca_tta2"), "pa_tta2": metrics.get("pa_tta2"), "asr_tta2": metrics.get("asr_tta2"),
            # per-epoch wall seconds of the whole training, resumed parts included (the checkpoint keeps them)
            "train_seconds": round(sum(seconds), 1) if seconds else meta.get("train_seconds"),
            "train_cpu_seconds": meta.get("train_cpu_seconds"),
            "command": meta.get("command"), "seed": meta.get("seed", (meta.get("victim") or {}).get("seed")),
            "train_hash": meta.get("train_hash"),
            # attack.jpeg_quality of the attack run: the changed training images stored as JPEG (None: as computed)
            "poison_jpeg_quality": (meta.get("attack_record") or {}).get("jpeg_quality"),
            "recipe_current": recipe_current(store, "clean" if config.parent.name == "clean"
                                             else f"attack@{config.parent.name}", Path(__file__).resolve().parents[1]),
        })
    clean = next((r for r in out if r["attack"] == "clean"), None)
    for r in out:
        r["ca_drop"] = (clean["ca"] - r["ca"]) if clean and r["ca"] is not None and r["attack"] != "clean" else None
        r["bound"] = _bound(r)
    return out


def _bound(r: dict) -> str:
    if r["attack"] == "clean" or r["asr"] is None:
        return ""
    if r["attack"] in CLEAN_LABEL:
        return f"clean-label: CA cost {100 * r['ca_drop']:.1f}" if r["ca_drop"] is not None else "clean-label"
    if r["attack"] in LOOP or r["attack"] == "badnets_random":
        return "met" if r["asr"] >= 0.85 else "ASR < 85"
    ok_asr, ok_ca = r["asr"] >= 0.90, r["ca_drop"] is not None and r["ca_drop"] <= 0.02
    return "met" if ok_asr and ok_ca else ", ".join(m for m, bad in (("ASR < 90", not ok_asr), ("CA drop > 2", not ok_ca)) if bad)


def _stored_as(r: dict) -> str:
    if r["attack"] == "clean":
        return "–"
    q = r.get("poison_jpeg_quality")
    return f"JPEG {q}" if q is not None else "as computed"


def markdown(table: list[dict], command: str, name: str) -> str:
    def pct(v):
        # half up, as the docs quote these numbers: 0.8815 (stored as 88.149999...) -> 88.2
        return f"{math.floor(1000 * v + 0.5 + 1e-9) / 10:.1f}" if v is not None else "–"

    lines = [
        f"# The victim store `{name}`: CIFAR-10 `fast_cnn` victims, one per attack",
        "",
        f"Command: `{command}` (reads the stores' training records; the victims come from `dvc repro victims/dvc.yaml`,"
        " each trained on all 50,000 training images of the JPEG copy of CIFAR-10, evaluated on all 10,000 test images)",
        "",
        "| attack | CA | PA | ASR | CA (TTA 2) | PA (TTA 2) | ASR (TTA 2) | CA drop vs clean | issue #19 bound | training wall s "
        "| current recipe | poison stored as |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['attack']} | {pct(r['ca'])} | {pct(r['pa'])} | {pct(r['asr'])} | {pct(r['ca_tta2'])} | {pct(r['pa_tta2'])}"
            f" | {pct(r['asr_tta2'])} | {pct(r['ca_drop'])} | {r['bound']} | {r['train_seconds'] or '–'} | "
            f"{ {True: 'yes', False: 'no (retrain pending)', None: '–'}[r['recipe_current']] } | {_stored_as(r)} |"
        )
    lines += ["", "The defenses' tables use the deployed model's numbers: no test-time augmentation (`victim.tta: 0`).",
              "\"poison stored as\": the training images the attack changed, as computed or re-encoded as JPEG at the"
              " source's quality (`victims.jpeg_quality`; as computed for `victims.lossless_attacks`, whose trigger JPEG"
              " destroys; docs/attacks.md, \"JPEG sources\"). Loop attacks of `victims.recipe_augment_attacks` (WaNet)"
              " train with the victim recipe's augmentation instead of BackdoorBench's batch PostTensorTransform"
              " (docs/models.md).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from detoxops.fileio import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("victims"))
    ap.add_argument("--name", default="cifar10-fast")
    ap.add_argument("--out-json", type=Path, required=True)
    ap.add_argument("--out-md", type=Path, default=None)
    args = ap.parse_args(argv)
    table = rows(args.store, args.name)
    if not table:
        print(f"no victims under {args.store / args.name}", file=sys.stderr)
        return 1
    command = record_command(__file__, argv)
    atomic_write_text(args.out_json, json.dumps({"command": command, "store": str(args.store / args.name),
                                                 "rows": table}, indent=1))
    if args.out_md:
        atomic_write_text(args.out_md, markdown(table, command, args.name))
    print(markdown(table, command, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
