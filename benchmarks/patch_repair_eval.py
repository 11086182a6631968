"""Patch repair (issue #20) on CIFAR-10 with the committed victim store: calibrate on validation, report held out.

Victims and triggered test sets come from the store by name (``victims/<store>/<attack>``): each victim's attack
record rebuilds its trigger (:func:`detoxops.models.store.victim_attack`) and the clean test split of
``--data`` is triggered again, so nothing but the store and the data source is needed. The test split is cut in
two halves by the rule of ``benchmarks/sampdetox_eval.py`` (``split_indices``): ``calibrate`` only sees the
validation half, ``table`` only the held-out half.

    # thresholds: the gate at a 5 % clean fire rate, the region at a 1 % clean pixel rate (validation half)
    python benchmarks/patch_repair_eval.py calibrate --n-clean 200 --out benchmarks/results/patch_repair_calibration.json
    # held-out: map quality, the gate's ROC, CA / PA / ASR of none / robust / repair / faithful per attack
    python benchmarks/patch_repair_eval.py table --attacks badnets --n-clean 200 --n-poisoned 100 \
        --calibration benchmarks/results/patch_repair_calibration.json --out benchmarks/results/patch_repair_table.json
    # the label-confirmed repair at several gate fire rates, on the context maps `table` left in --cache
    python benchmarks/patch_repair_eval.py confirm --attacks badnets --n-clean 100 --n-poisoned 100 \
        --calibration benchmarks/results/patch_repair_calibration_rates.json --fire-rates 0.05,0.15,0.3 \
        --cache runs/patch_repair_cache --clean-maps runs/patch_repair_cache/clean_repair_<key>.npz \
        --out benchmarks/results/patch_repair_confirm.json
    # the global path (stage 1 / soft stage 2) behind the repair, swept on validation; profile=faithful is the
    # paper without the repair, the reference of the 'no worse than faithful' bound
    python benchmarks/patch_repair_eval.py confirm --split val --attacks badnets,blended --n-clean 100 \
        --n-poisoned 100 --calibration benchmarks/results/patch_repair_calibration_val_rates.json --fire-rates 0.5 \
        --confirm-modes label --global-points "t1=10;t1=30,t2=200;profile=faithful" --cache runs/patch_repair_cache \
        --out benchmarks/results/patch_repair_global_sweep_val.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import purifier_sha  # noqa: E402
from detoxops.config import DataConfig, PatchRepairConfig, SampDetoxConfig  # noqa: E402
from detoxops.data import from_tensor, load_splits, to_tensor  # noqa: E402
from detoxops.defenses.base import make_generator  # noqa: E402
from detoxops.defenses.map_quality import roc_auc  # noqa: E402
from detoxops.defenses.patch_repair import PatchCalibration, PatchRepair, calibrate  # noqa: E402
from detoxops.defenses.sampdetox import SampDetox  # noqa: E402
from detoxops.diffusion import load_purifier  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402
from detoxops.models.store import victim_attack  # noqa: E402
from detoxops.operations.sweep import point_label  # noqa: E402
from sampdetox_eval import split_indices  # noqa: E402  (the one split rule of the SampDetox benchmarks)

SHIPPED_PURIFIER = Path(__file__).resolve().parents[1] / "src/detoxops/assets/purifiers/cifar10-32"


def clean_test(source: str):
    return load_splits(source, DataConfig(source=source, image_size="auto", train_per_class=None,
                                          test_per_class=None), progress=False)["test"]


def triggered_set(clean, split: str, attack, n_poisoned: int, seed: int):
    """The triggered images every mode of this benchmark uses for ``seed``: ``n_poisoned`` non-target images of the
    half (``split``), drawn by ``seed`` and sorted, triggered. Returns (indices, triggered uint8, true labels)."""
    half = split_indices(clean, split, len(clean), seed=0)  # the whole half the clean images come from
    pool = half[clean.labels[half] != attack.target]
    pidx = np.sort(np.random.default_rng(seed).permutation(pool)[:n_poisoned])
    triggered, true_labels, _ = attack.poison_test_arrays(clean.images[pidx], clean.labels[pidx])
    return pidx, triggered, true_labels


def purifier_key(path: Path) -> str:
    """Cached maps / outputs are keyed by the weights, not the folder's name: a shipped name can get new weights."""
    return f"{path}@{purifier_sha(path)}"


def context_maps(repair: PatchRepair, images_u8: np.ndarray, batch: int, seed: int) -> np.ndarray:
    out = []
    for i, start in enumerate(tqdm(range(0, len(images_u8), batch), desc="context maps")):
        x = to_tensor(np.asarray(images_u8[start : start + batch])) * 2 - 1
        with torch.no_grad():
            out.append(repair.context_map(x, make_generator(seed * 1009 + i)).numpy())
    return np.concatenate(out)[:, 0]


def defend(defense, images_u8: np.ndarray, batch: int, seed: int, desc: str):
    """(uint8 outputs, repaired flags, seconds, context maps or None)."""
    imgs, flags, cmaps, t0 = [], [], [], time.perf_counter()
    for i, start in enumerate(tqdm(range(0, len(images_u8), batch), desc=desc)):
        x01 = to_tensor(np.asarray(images_u8[start : start + batch]))
        with torch.no_grad():
            o = defense(x01, make_generator(seed * 1009 + i)) if defense is not None else None
        imgs.append(from_tensor(o.images) if o is not None else np.asarray(images_u8[start : start + batch]))
        rep = getattr(o, "repaired", None)
        flags.append(rep.numpy() if rep is not None else np.zeros(len(x01), dtype=bool))
        if o is not None and "context_map" in o.maps:
            cmaps.append(o.maps["context_map"][:, 0].numpy())
    return (np.concatenate(imgs), np.concatenate(flags), time.perf_counter() - t0,
            np.concatenate(cmaps) if cmaps else None)


def cached_defend(cache: Path | None, defense, name: str, images_u8: np.ndarray, batch: int, seed: int,
                  purifier: str):
    """:func:`defend` on the clean images, stored under ``cache`` by a key of everything the output depends on."""
    import hashlib

    if cache is None:
        return defend(defense, images_u8, batch, seed, f"clean/{name}")
    cfg = defense.cfg.model_dump_json() if defense is not None else "none"
    key = hashlib.sha256(f"{name}|{cfg}|{purifier}|{batch}|{seed}".encode() + np.ascontiguousarray(images_u8).tobytes())
    path = cache / f"clean_{name}_{key.hexdigest()[:16]}.npz"
    if path.is_file():
        z = np.load(path)
        return z["images"], z["flags"], float(z["seconds"]), (z["maps"] if z["maps"].ndim == 3 else None)
    images, flags, seconds, maps = defend(defense, images_u8, batch, seed, f"clean/{name}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, images=images, flags=flags, seconds=seconds, maps=maps if maps is not None else np.zeros(0))
    tmp.replace(path)
    return images, flags, seconds, maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["calibrate", "table", "confirm", "select", "report"])
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--store", default="cifar10-fast")
    ap.add_argument("--purifier", type=Path, default=SHIPPED_PURIFIER)
    ap.add_argument("--attacks", default="badnets")
    ap.add_argument("--defenses", default="none,robust,repair,faithful")
    ap.add_argument("--n-clean", type=int, default=200)
    ap.add_argument("--n-poisoned", type=int, default=100)
    ap.add_argument("--fire-rate", type=float, default=0.05)
    ap.add_argument("--pixel-rate", type=float, default=0.01)
    ap.add_argument("--fire-rates", default="",
                    help="calibrate: also the gate thresholds at these clean fire rates; confirm: the rates to run")
    ap.add_argument("--clean-maps", type=Path, default=None,
                    help="confirm: the clean images' context maps (a `table` run's clean_repair_*.npz; default: "
                         "computed once and kept in --cache)")
    ap.add_argument("--confirm-modes", default="none,label",
                    help="confirm: the `confirm` settings to run at every rate; a mode written MODE@RATE runs only "
                         "at that rate, e.g. label,none@0.05")
    ap.add_argument("--split", choices=["val", "test"], default="test",
                    help="confirm: the half to run on (val: the selection of issue #20; test: held out)")
    ap.add_argument("--calibration", type=Path, default=None, help="table: thresholds written by `calibrate`")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="patch repair field, e.g. --set stride=100")
    ap.add_argument("--global-points", default="",
                    help="confirm: SampDetox settings of the global path to run at every gate setting, points "
                         "separated by ';', fields by ',', e.g. 't1=10;t1=30,t2=200;profile=faithful' (a point "
                         "setting profile=faithful runs the paper without the repair: the reference of issue "
                         "#20's 'no worse than faithful' bound); default: the repair profile as it is")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None,
                    help="table: keep the defended clean images here (they do not depend on the victim), keyed by "
                         "defense settings, images and seed, so a later run with more attacks reuses them; "
                         "calibrate / confirm: keep the context maps here")
    ap.add_argument("--save-calibration", type=Path, default=None,
                    help="calibrate: also write the maps' PatchCalibration there (the file the repair profile reads, "
                         "e.g. the purifier folder's patch_calibration.json)")
    ap.add_argument("--rows", type=Path, action="append", default=[],
                    help="select: `confirm --split val` results to choose from (repeat; every attack of every file)")
    ap.add_argument("--max-ca-drop", type=float, default=5.0,
                    help="select: the rule's bound on the mean CA drop against no defense (points)")
    ap.add_argument("--md", type=Path, default=None, help="select / report: also write the table as markdown here")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.mode in ("select", "report"):
        result = select(args) if args.mode == "select" else report(args)
        _write(args.out, result)
        if args.md is not None:
            args.md.parent.mkdir(parents=True, exist_ok=True)
            args.md.write_text(markdown(result))
        return
    torch.set_num_threads(args.threads)
    patch_kw = {k: json.loads(v) if v[:1].isdigit() or v[:1] in "[{-" else v
                for k, v in (o.split("=", 1) for o in args.overrides)}
    if args.calibration is not None:
        patch_kw = {**json.loads(args.calibration.read_text())["thresholds"], **patch_kw}
    # `table` compares the repair without confirmation (its clean outputs are shared by every victim);
    # `confirm` sets it per row; --set confirm=label overrides
    patch_kw.setdefault("confirm", "none")
    patch_cfg = PatchRepairConfig(**patch_kw)
    purifier = load_purifier(args.purifier)
    args.purifier_key = purifier_key(args.purifier)
    repair = PatchRepair(purifier, patch_cfg)
    clean = clean_test(args.data)
    split = "val" if args.mode == "calibrate" else args.split if args.mode == "confirm" else "test"
    cidx = split_indices(clean, split, args.n_clean, seed=0)
    record = {"command": shlex.join(["python", *sys.argv]), "mode": args.mode, "split": split,
              "patch_repair": patch_cfg.model_dump(), "purifier": str(args.purifier),
              "purifier_key": args.purifier_key, "n_clean": int(len(cidx)),
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "torch": torch.__version__, "load_avg_start": list(__import__("os").getloadavg())}}

    if args.mode == "calibrate":
        t0 = time.perf_counter()
        if args.cache is None:
            clean_maps = context_maps(repair, clean.images[cidx], args.batch, args.seed)
            seconds = time.perf_counter() - t0
        else:  # the maps `confirm --split val` reuses; their computing time is stored with them
            clean_maps, seconds = stored_context_maps(args.cache, "val_clean", repair, clean.images[cidx], args.batch,
                                                      args.seed, args.purifier_key)
        record["clean_map_seconds"] = round(seconds, 1)
        record["thresholds"] = calibrate(torch.from_numpy(clean_maps[:, None]), args.fire_rate, args.pixel_rate)
        if args.save_calibration is not None:
            PatchCalibration.from_maps(torch.from_numpy(clean_maps[:, None]), patch_cfg, meta={
                "images_from": f"{args.data}: test split, validation half (benchmarks/sampdetox_eval.py split_indices), "
                               f"{len(cidx)} images", "purifier": str(args.purifier), "seed": args.seed,
                "batch_size": args.batch, "command": record["command"]}).save(args.save_calibration)
        record["fire_rate"], record["pixel_rate"] = args.fire_rate, args.pixel_rate
        record["clean_peaks"] = clean_maps.reshape(len(clean_maps), -1).max(1).tolist()  # any other rate later
        record["gate_thresholds"] = {r: calibrate(torch.from_numpy(clean_maps[:, None]), float(r),
                                                  args.pixel_rate)["gate_threshold"]
                                     for r in filter(None, args.fire_rates.split(","))}
        _write(args.out, record)
        return

    if args.mode == "confirm":
        record["rows"] = confirm_table(args, patch_cfg, purifier, clean, cidx)
        record["machine"]["load_avg_end"] = list(__import__("os").getloadavg())
        _write(args.out, record)
        return

    defenses = {
        "none": None,
        "robust": SampDetox(purifier, SampDetoxConfig(profile="robust", sampler="ddim")),
        "repair": SampDetox(purifier, SampDetoxConfig(profile="repair", sampler="ddim", patch=patch_cfg)),
        "faithful": SampDetox(purifier, SampDetoxConfig(profile="faithful", sampler="ddim")),
    }
    chosen = args.defenses.split(",")
    if "repair" not in chosen:
        raise SystemExit("table: --defenses must include repair (its context maps are the gate's and the map's numbers)")
    # the repair defense's own context maps give the gate / map numbers, so the maps are computed once
    clean_out = {d: cached_defend(args.cache, defenses[d], d, clean.images[cidx], args.batch, args.seed, args.purifier_key)
                 for d in chosen}
    clean_maps = clean_out["repair"][3]
    clean_peaks = clean_maps.reshape(len(clean_maps), -1).max(1)
    record["clean_fire_rate"] = float(np.mean(clean_peaks > patch_cfg.gate_threshold))
    record["clean_pixel_flag_rate"] = float(np.mean(clean_maps > patch_cfg.pixel_threshold))
    rows = []
    for name in filter(None, args.attacks.split(",")):
        ref = f"{args.store}/{name}"
        model, attack = load_classifier(ref).float().eval(), victim_attack(ref)
        pidx, triggered, true_labels = triggered_set(clean, split, attack, args.n_poisoned, args.seed)
        mask = attack.trigger_mask(clean.images[pidx]) if hasattr(attack, "trigger_mask") else None
        pois_out = {d: defend(defenses[d], triggered, args.batch, args.seed + 1, f"{name}/{d}") for d in chosen}
        trig_maps = pois_out["repair"][3]
        if args.cache is not None:  # kept for offline analysis of other gate scores (docs/sampdetox.md)
            np.savez(args.cache / f"triggered_{name}_seed{args.seed}.npz", maps=trig_maps, mask=mask,
                     repaired=pois_out["repair"][1])
        row = {"attack": name, "victim": ref, "target": int(attack.target), "n_poisoned": int(len(pidx))}
        peaks = trig_maps.reshape(len(trig_maps), -1).max(1)
        row["gate_auc"] = float(roc_auc(np.r_[clean_peaks, peaks][None],
                                        np.r_[np.zeros(len(clean_peaks)), np.ones(len(peaks))].astype(bool)[None])[0])
        row["gate_tpr"] = float(np.mean(peaks > patch_cfg.gate_threshold))
        if mask is not None and mask.any() and mask.mean() < 0.5:
            row["map_pixel_auc"] = float(roc_auc(trig_maps, mask, per_image=False))
            row["trigger_pixels_flagged"] = float(np.mean(trig_maps[mask] > patch_cfg.pixel_threshold))
            row["other_pixels_flagged"] = float(np.mean(trig_maps[~mask] > patch_cfg.pixel_threshold))
        for d in chosen:
            pois_imgs, pois_flags, secs, _ = pois_out[d]
            clean_imgs, clean_flags, clean_secs, _ = clean_out[d]
            pc, pp = predict(model, clean_imgs), predict(model, pois_imgs)
            row[d] = {"ca": 100 * float(np.mean(pc == clean.labels[cidx])),
                      "pa": 100 * float(np.mean(pp == true_labels)),
                      "asr": 100 * float(np.mean(pp == attack.target)),
                      "repaired_clean": float(clean_flags.mean()), "repaired_triggered": float(pois_flags.mean()),
                      "images_per_s": round((len(cidx) + len(pidx)) / max(secs + clean_secs, 1e-9), 3)}
            print(name, d, row[d], flush=True)
        rows.append(row)
    record["rows"] = rows
    record["machine"]["load_avg_end"] = list(__import__("os").getloadavg())
    _write(args.out, record)


def stored_context_maps(cache: Path, tag: str, repair: PatchRepair, images_u8: np.ndarray, batch: int, seed: int,
                        purifier: str) -> tuple[np.ndarray, float]:
    """:func:`context_maps`, kept in ``cache`` under a key of everything a map depends on (the map's own
    settings, the purifier, the images, batch and seed), so a later run with other gate rates reuses them.
    Returns the maps and the seconds their computation took (stored with them, also when reused)."""
    import hashlib

    cfg = repair.cfg.model_dump(include={"block", "offsets", "t_start", "stride", "window"})
    key = hashlib.sha256(f"{json.dumps(cfg, sort_keys=True)}|{purifier}|{batch}|{seed}".encode()
                         + np.ascontiguousarray(images_u8).tobytes()).hexdigest()[:16]
    path = cache / f"maps_{tag}_{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["maps"], float(z["seconds"]) if "seconds" in z else float("nan")
    t0 = time.perf_counter()
    maps = context_maps(repair, images_u8, batch, seed)
    seconds = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, maps=maps, seconds=seconds)
    tmp.replace(path)
    return maps, seconds


def triggered_context_maps(cache: Path, split: str, name: str, repair: PatchRepair, triggered_u8: np.ndarray,
                           batch: int, seed: int, purifier: str) -> np.ndarray:
    """The context maps of ``name``'s triggered set for ``seed`` (:func:`triggered_set`), under the one cache key
    every tool of issue #20 shares: tag ``<split>_<attack>``, noise seed ``seed + 1``."""
    return stored_context_maps(cache, f"{split}_{name}", repair, triggered_u8, batch, seed + 1, purifier)[0]


def confirm_table(args, patch_cfg: PatchRepairConfig, purifier, clean, cidx: np.ndarray) -> list[dict]:
    """The repair profile with ``confirm: label`` (and without it) at the gate thresholds of ``--fire-rates``
    (validation calibration) on ``--split``. The costly context maps are reused: on the held-out half those a
    ``table`` run stored (``--clean-maps``, ``triggered_<attack>_seed<S>.npz``), elsewhere those computed by an
    earlier ``confirm`` run (computed and kept in ``--cache`` when missing); the gate, region, repair,
    confirmation and SampDetox's global path run for real."""
    if args.calibration is None or args.cache is None:
        raise SystemExit("confirm needs --calibration (with gate_thresholds) and --cache")
    gates = json.loads(args.calibration.read_text())["gate_thresholds"]
    repair = PatchRepair(purifier, patch_cfg)
    if args.clean_maps is not None:
        clean_maps = np.load(args.clean_maps)["maps"]
    else:
        clean_maps, _ = stored_context_maps(args.cache, f"{args.split}_clean", repair, clean.images[cidx],
                                            args.batch, args.seed, args.purifier_key)
    if len(clean_maps) != len(cidx):
        raise SystemExit(f"--clean-maps holds {len(clean_maps)} maps, --n-clean selects {len(cidx)} images")
    points = global_points(args.global_points)
    settings = [(rate, confirm, point) for rate in filter(None, args.fire_rates.split(","))
                for confirm in confirm_modes(args.confirm_modes, rate) for point in points]
    rows = []
    for name in filter(None, args.attacks.split(",")):
        ref = f"{args.store}/{name}"
        model, attack = load_classifier(ref).float().eval(), victim_attack(ref)
        pidx, triggered, true_labels = triggered_set(clean, args.split, attack, args.n_poisoned, args.seed)
        table_maps = args.cache / f"triggered_{name}_seed{args.seed}.npz"  # a held-out `table` run's
        if args.split == "test" and table_maps.is_file():
            trig_maps = np.load(table_maps)["maps"]
        else:
            trig_maps = triggered_context_maps(args.cache, args.split, name, repair, triggered, args.batch,
                                               args.seed, args.purifier_key)
        maps = MapLookup([clean.images[cidx], triggered], [clean_maps, trig_maps])
        for rate, confirm, point in settings:
            cfg = patch_cfg.model_copy(update={"gate_threshold": gates[rate], "confirm": confirm})
            sd_cfg = SampDetoxConfig(**{"profile": "repair", "sampler": "ddim", **point, "patch": cfg})
            defense = SampDetox(purifier, sd_cfg, classifier=model)
            if defense.patch is not None:
                defense.patch.context_map = maps  # the stored maps instead of recomputing them
            c_imgs, c_flags, c_s, _ = defend(defense, clean.images[cidx], args.batch, args.seed, "clean")
            p_imgs, p_flags, p_s, _ = defend(defense, triggered, args.batch, args.seed + 1, name)
            pc, pp = predict(model, c_imgs), predict(model, p_imgs)
            row = {"attack": name, "split": args.split, "seed": args.seed, "fire_rate": float(rate),
                   "gate_threshold": gates[rate],
                   "confirm": confirm, "global": global_label(point), "patch": patch_label(args.overrides),
                   # the point's label names what it sets on top of the repair preset, which can change between
                   # runs (t2 120 -> 200 on 2026-12-07); the resolved values say what ran
                   "global_resolved": sd_cfg.resolved().model_dump(include=set(SampDetoxConfig.PROFILE_PRESETS[
                       "repair"]) | {"profile"}),
                   "ca": 100 * float(np.mean(pc == clean.labels[cidx])),
                   "pa": 100 * float(np.mean(pp == true_labels)),
                   "asr": 100 * float(np.mean(pp == attack.target)),
                   "gated_clean": float(np.mean(clean_maps.reshape(len(cidx), -1).max(1) > gates[rate])),
                   "gated_triggered": float(np.mean(trig_maps.reshape(len(pidx), -1).max(1) > gates[rate])),
                   "repaired_clean": float(c_flags.mean()), "repaired_triggered": float(p_flags.mean()),
                   "seconds_without_maps": round(c_s + p_s, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def select(args) -> dict:
    """Issue #20's selection rule on validation rows (``confirm --split val``): per setting (gate rate, confirm),
    the mean over the attacks of ASR and of the CA drop against no defense (the victim on the same validation
    images, computed here); the chosen setting has the lowest mean ASR with a mean CA drop <= ``--max-ca-drop``
    (ties: fewer clean images changed, then the stricter gate). Settings not run on every attack are left out."""
    rows = [r for path in args.rows for r in json.loads(path.read_text())["rows"]]
    if not rows or any(r.get("split") != "val" for r in rows):
        raise SystemExit("select needs --rows files of `confirm --split val` runs (and only those)")
    clean = clean_test(args.data)
    none = {name: no_defense(args, clean, "val", name, args.seed) for name in sorted({r["attack"] for r in rows})}
    attacks = sorted(none)
    table = rule_table(rows, none)
    chosen = choose(table, args.max_ca_drop)
    for t in table:
        print(json.dumps({k: v for k, v in t.items() if k != "per_attack"}))
    print("chosen:", None if chosen is None else {k: chosen[k] for k in ("fire_rate", "confirm", "global",
                                                                          "patch", "mean_asr", "mean_ca_drop")})
    return {"command": shlex.join(["python", *sys.argv]), "mode": "select", "split": "val", "attacks": attacks,
            "max_ca_drop": args.max_ca_drop, "none": none, "settings": table,
            "chosen": None if chosen is None else {k: chosen[k] for k in ("fire_rate", "confirm", "global", "patch")}}


def no_defense(args, clean, split: str, name: str, seed: int) -> dict:
    """CA / PA / ASR (percent) of the stored victim ``name`` on the images ``confirm`` defends for ``seed``: the
    first ``--n-clean`` clean images of the half, and ``--n-poisoned`` non-target images of it, triggered."""
    ref = f"{args.store}/{name}"
    model, attack = load_classifier(ref).float().eval(), victim_attack(ref)
    cidx = split_indices(clean, split, args.n_clean, seed=0)
    _, triggered, true_labels = triggered_set(clean, split, attack, args.n_poisoned, seed)
    pp = predict(model, triggered)
    return {"ca": 100 * float(np.mean(predict(model, clean.images[cidx]) == clean.labels[cidx])),
            "pa": 100 * float(np.mean(pp == true_labels)), "asr": 100 * float(np.mean(pp == attack.target))}


def report(args) -> dict:
    """The held-out table from ``confirm --split test`` rows (one run per seed, ``--seed``): per setting and attack,
    CA / PA / ASR as the mean over the seeds with their range, next to no defense on the same images, and the means
    over the attacks. Nothing is chosen here: the setting was chosen on validation (``select``); settings not run
    on every attack and seed are left out."""
    rows = [r for path in args.rows for r in json.loads(path.read_text())["rows"]]
    if not rows or any(r.get("split") != "test" or "seed" not in r for r in rows):
        raise SystemExit("report needs --rows files of `confirm --split test` runs (rows with their seed)")
    clean = clean_test(args.data)
    attacks, seeds = sorted({r["attack"] for r in rows}), sorted({r["seed"] for r in rows})
    none = {a: {s: no_defense(args, clean, "test", a, s) for s in seeds} for a in attacks}
    settings: dict[tuple, dict[tuple, dict]] = {}
    for r in rows:
        key = setting_key(r)
        settings.setdefault(key, {})[(r["attack"], r["seed"])] = r

    def summary(per_seed: list[dict]) -> dict:
        out = {}
        for k in ("ca", "pa", "asr"):
            v = [x[k] for x in per_seed]
            out[k], out[f"{k}_range"] = float(np.mean(v)), [float(min(v)), float(max(v))]
        return out

    table = [{"setting": "none", "per_attack": {a: summary(list(none[a].values())) for a in attacks}}]
    for (rate, confirm, point, patch), got in sorted(settings.items()):
        if set(got) != {(a, s) for a in attacks for s in seeds}:
            continue
        per_attack = {a: {**summary([got[(a, s)] for s in seeds]),
                          "ca_drop": float(np.mean([none[a][s]["ca"] - got[(a, s)]["ca"] for s in seeds])),
                          "repaired_clean": float(np.mean([got[(a, s)]["repaired_clean"] for s in seeds])),
                          "repaired_triggered": float(np.mean([got[(a, s)]["repaired_triggered"] for s in seeds]))}
                      for a in attacks}
        table.append({"setting": f"{point} | {patch} | gate {rate} {confirm}", "fire_rate": rate, "confirm": confirm,
                      "global": point, "patch": patch, "per_attack": per_attack})
    for t in table:
        t["mean_asr"] = float(np.mean([t["per_attack"][a]["asr"] for a in attacks]))
        t["mean_ca"] = float(np.mean([t["per_attack"][a]["ca"] for a in attacks]))
        print(json.dumps({k: v for k, v in t.items() if k != "per_attack"}))
    return {"command": shlex.join(["python", *sys.argv]), "mode": "report", "split": "test", "attacks": attacks,
            "seeds": seeds, "n_clean": args.n_clean, "n_poisoned": args.n_poisoned, "settings": table}


def markdown(result: dict) -> str:
    """``select`` / ``report`` as a markdown table: one line per setting, CA / PA / ASR per attack."""
    attacks = result["attacks"]
    head = f"{result['mode']} on the {result['split']} half"
    if result["mode"] == "report":
        head += f", seeds {', '.join(map(str, result['seeds']))} (mean; ranges in the JSON)"
    lines = [f"Command: `{result['command']}`", "", head + ". CA / PA / ASR in %.", "",
             "| setting | " + " | ".join(attacks) + " | mean ASR | mean CA |",
             "|---|" + "---|" * (len(attacks) + 2)]
    settings = result["settings"]
    if result["mode"] == "select":  # the no-defense line first, as in `report`
        none = {"setting": "none", "per_attack": result["none"],
                "mean_asr": float(np.mean([result["none"][a]["asr"] for a in attacks])),
                "mean_ca": float(np.mean([result["none"][a]["ca"] for a in attacks]))}
        settings = [none] + [dict(t, setting=f"{t['global']} | {t.get('patch', 'calibrated')} | gate "
                                             f"{t['fire_rate']} {t['confirm']}",
                                  mean_ca=none["mean_ca"] - t["mean_ca_drop"]) for t in settings]
    for t in settings:
        cells = [f"{t['per_attack'][a]['ca']:.1f} / {t['per_attack'][a]['pa']:.1f} / {t['per_attack'][a]['asr']:.1f}"
                 for a in attacks]
        lines.append(f"| {t['setting']} | " + " | ".join(cells) + f" | {t['mean_asr']:.1f} | {t['mean_ca']:.1f} |")
    if result.get("chosen"):
        lines += ["", "Chosen by the rule: " + ", ".join(f"{k} {v}" for k, v in result["chosen"].items())]
    return "\n".join(lines) + "\n"


def setting_key(row: dict) -> tuple:
    """What one setting of a row is: gate rate, confirmation, global point, repair fields (rows written before the
    last two existed ran the repair preset with the calibration's thresholds)."""
    return row["fire_rate"], row["confirm"], row.get("global", "repair"), row.get("patch", "calibrated")


def rule_table(rows: list[dict], none: dict[str, dict]) -> list[dict]:
    """Per setting (gate rate, confirm) run on every attack of ``none``: mean ASR, mean CA drop against no
    defense, mean PA and the share of clean images the repair changed."""
    attacks = sorted(none)
    settings: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = setting_key(r)
        settings.setdefault(key, {})[r["attack"]] = r
    table = []
    for (rate, confirm, point, patch), by_attack in sorted(settings.items()):
        if set(by_attack) != set(attacks):
            continue
        table.append({"fire_rate": rate, "confirm": confirm, "global": point, "patch": patch,
                      "mean_asr": float(np.mean([by_attack[a]["asr"] for a in attacks])),
                      "mean_ca_drop": float(np.mean([none[a]["ca"] - by_attack[a]["ca"] for a in attacks])),
                      "mean_pa": float(np.mean([by_attack[a]["pa"] for a in attacks])),
                      "clean_changed": float(np.mean([by_attack[a]["repaired_clean"] for a in attacks])),
                      "per_attack": {a: {k: by_attack[a][k] for k in ("ca", "pa", "asr", "repaired_clean",
                                                                        "repaired_triggered")} for a in attacks}})
    return table


def choose(table: list[dict], max_ca_drop: float) -> dict | None:
    """The rule: lowest mean ASR among settings with mean CA drop <= ``max_ca_drop``; ties: fewer clean images
    changed, then the stricter gate (lower fire rate)."""
    allowed = [t for t in table if t["mean_ca_drop"] <= max_ca_drop]
    return min(allowed, key=lambda t: (t["mean_asr"], t["clean_changed"], t["fire_rate"])) if allowed else None


def global_points(spec: str) -> list[dict]:
    """``--global-points``: a list of SampDetox field overrides (``[{}]``: the repair profile as it is). Values are
    read as YAML scalars (``t1=30`` is an int); every point is validated by building its config, so a typo fails
    before any image is defended."""
    import yaml

    points = []
    for item in [p.strip() for p in spec.split(";") if p.strip()] or [""]:
        point = {}
        for field in filter(None, (f.strip() for f in item.split(","))):
            key, sep, value = field.partition("=")
            if not sep or not key.strip():
                raise SystemExit(f"--global-points: {field!r} is not KEY=VALUE")
            point[key.strip()] = yaml.safe_load(value)
        if "patch" in point or "sampler" in point:
            raise SystemExit("--global-points: patch and sampler are set by the benchmark, not by a point")
        try:
            SampDetoxConfig(**{"profile": "repair", **point})
        except ValueError as exc:
            raise SystemExit(f"--global-points: {item!r}: {exc}") from None
        points.append(point)
    return points


def global_label(point: dict) -> str:
    """A global point's name in the rows: the sweep's label with the fields sorted, ``repair`` when it sets none."""
    return point_label(dict(sorted(point.items()))) if point else "repair"


def patch_label(overrides: list[str]) -> str:
    """The repair's ``--set`` fields in the rows (``calibrated`` when none: the calibration's thresholds)."""
    return ",".join(sorted(overrides)) or "calibrated"


def confirm_modes(spec: str, rate: str) -> list[str]:
    """The ``confirm`` settings of ``--confirm-modes`` that run at gate rate ``rate`` (``MODE@RATE``: that rate only)."""
    modes = []
    for item in filter(None, (m.strip() for m in spec.split(","))):
        mode, _, only = item.partition("@")
        if mode not in ("none", "label"):
            raise SystemExit(f"--confirm-modes: unknown confirm setting {mode!r} (none, label)")
        if not only or float(only) == float(rate):
            modes.append(mode)
    return modes


class MapLookup:
    """Stands in for :meth:`PatchRepair.context_map`: the stored map of each image of the batch, found by its
    uint8 content (the batch is in diffusion space)."""

    def __init__(self, image_sets: list[np.ndarray], map_sets: list[np.ndarray]) -> None:
        self.maps = {np.ascontiguousarray(img).tobytes(): m for imgs, ms in zip(image_sets, map_sets, strict=True)
                     for img, m in zip(np.asarray(imgs), ms, strict=True)}

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        u8 = from_tensor(((x + 1) / 2).float().cpu())
        try:
            return torch.from_numpy(np.stack([self.maps[img.tobytes()] for img in u8]))[:, None].to(x)
        except KeyError:
            raise SystemExit("an image without a stored context map reached the repair") from None


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    print(json.dumps({k: v for k, v in record.items() if k != "rows"}, indent=1))
    for r in record.get("rows", []):
        print(json.dumps(r))


if __name__ == "__main__":
    main()
