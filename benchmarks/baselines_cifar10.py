"""SampDetox's table-1 baselines (ZIP, Sancdifi, BDMAE; issue #22) next to SampDetox on CIFAR-10, on the committed
victim store, held out, several seeds.

Victims and triggered images come from the store by name (``victims/<store>/<attack>``, as
``benchmarks/patch_repair_eval.py``): each victim's attack record rebuilds its trigger and the clean test split of
``--data`` is triggered again. The test split's held-out half is the one of ``benchmarks/sampdetox_eval.py``
(``split_indices``, seed 0: the half SampDetox's defaults were *not* chosen on); a seed picks which ``--n-clean``
clean images (class-balanced) and ``--n-poisoned`` triggered non-target images of that half are used and seeds the
defenses' noise. Every defense is a catalog name (``detoxops.defenses.catalog``) built with ``params.yaml``
(``sampdetox``, ``baselines``; ``--set`` overrides), so the rows are what ``detoxops detox eval`` would run.
Sancdifi and BDMAE query the attack's own victim (black box: labels only; ``queries_per_image``), so their clean
images are defended per attack; the others' once per seed. The victim classifies without test-time augmentation
(a deployed model's single pass). Outputs are cached per (seed, images, defense) under ``--cache``, so a killed run
resumes where it stopped.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/baselines_cifar10.py --attacks badnets,blended \\
        --seeds 0,1,2 --n-clean 50 --n-poisoned 50 --cache runs/baselines_cifar10 \\
        --out benchmarks/results/baselines_cifar10_fast.json --md docs/results/baselines-cifar10-fast.md
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detoxops.config import load_params  # noqa: E402
from detoxops.data import from_tensor, stratified_subset_indices, to_tensor  # noqa: E402
from detoxops.defenses.base import make_generator  # noqa: E402
from detoxops.defenses.catalog import build_defense  # noqa: E402
from detoxops.diffusion import load_purifier  # noqa: E402
from detoxops.metrics import attack_success_rate, clean_accuracy, percent, poisoned_accuracy  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402
from detoxops.models.store import victim_attack  # noqa: E402
from patch_repair_eval import SHIPPED_PURIFIER  # noqa: E402  (the shipped 32x32 purifier)
from patch_repair_eval import clean_test as _clean_test  # noqa: E402  (the clean test split of --data)
from sampdetox_eval import split_indices  # noqa: E402  (the one split rule of the SampDetox benchmarks)

ROOT = Path(__file__).resolve().parents[1]
clean_test = functools.lru_cache(maxsize=2)(_clean_test)
"""The clean test split of a source, decoded once per process (10,000 JPEGs)."""
QUERYING = {"sancdifi", "bdmae"}
"""Defenses that query the victim: their outputs depend on it, so clean images are defended per attack."""

PAPER_TABLE1 = {  # SampDetox (NeurIPS 2024) table 1, CIFAR-10, PreAct-ResNet18: CA / PA / ASR in % (docs/baselines.md)
    "badnets": {"none": (92.00, 10.18, 99.97), "sancdifi": (76.59, 89.55, 1.92), "bdmae": (89.02, 90.10, 2.32),
                "zip": (88.12, 86.52, 7.17), "sampdetox": (89.57, 90.15, 2.11)},
    "blended": {"none": (93.85, 10.93, 99.51), "sancdifi": (77.92, 51.12, 15.06), "bdmae": (87.84, 14.88, 96.46),
                "zip": (88.51, 63.81, 8.72), "sampdetox": (90.23, 86.65, 1.96)},
    "sig": {"none": (84.94, 9.78, 98.50), "sancdifi": (70.68, 43.73, 29.58), "bdmae": (82.77, 10.08, 96.65),
            "zip": (82.15, 35.60, 36.58), "sampdetox": (83.71, 65.06, 11.03)},
    "wanet": {"none": (91.43, 10.27, 91.05), "sancdifi": (77.87, 42.97, 14.35), "bdmae": (85.95, 23.19, 50.63),
              "zip": (86.91, 85.22, 8.36), "sampdetox": (89.34, 88.92, 5.59)},
    "bpp": {"none": (91.38, 9.46, 98.40), "sancdifi": (75.32, 50.42, 15.25), "bdmae": (86.69, 21.73, 53.46),
            "zip": (85.42, 82.94, 7.20), "sampdetox": (90.59, 84.83, 6.15)},
}
PAPER_NAME = {"faithful": "sampdetox", "faithful-ddim": "sampdetox"}
"""Our rows that are the paper's SampDetox (Algorithm 1): the paper's column they are compared with."""


def defend(defense, images_u8: np.ndarray, batch: int, seed: int, desc: str) -> tuple[np.ndarray, int, float]:
    """(uint8 outputs, classifier queries spent, seconds): ``defense`` over ``images_u8`` in batches, batch i seeded
    with ``seed * 1009 + i`` (the rule of the other SampDetox benchmarks)."""
    outs, queries, t0 = [], 0, time.perf_counter()
    for i, start in enumerate(tqdm(range(0, len(images_u8), batch), desc=desc, leave=False)):
        x01 = to_tensor(np.asarray(images_u8[start : start + batch]))
        with torch.no_grad():
            o = defense(x01, make_generator(seed * 1009 + i))
        outs.append(from_tensor(o.images))
        q = getattr(o, "queries", None)
        queries += int(q.sum()) if q is not None else 0
    return np.concatenate(outs), queries, time.perf_counter() - t0


def cached(cache: Path | None, key_parts: list[str], images_u8: np.ndarray, compute):
    """``compute()`` stored under ``cache`` by a key of everything the output depends on (resume after a kill)."""
    if cache is None:
        return compute()
    key = hashlib.sha256("|".join(key_parts).encode() + np.ascontiguousarray(images_u8).tobytes()).hexdigest()[:20]
    path = cache / f"{key_parts[0]}_{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["images"], int(z["queries"]), float(z["seconds"])
    images, queries, seconds = compute()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, images=images, queries=queries, seconds=seconds)
    tmp.replace(path)
    return images, queries, seconds


def pick(clean, half: np.ndarray, n_clean: int, n_poisoned: int, target: int | None, seed: int):
    """Clean indices (class-balanced, ``n_clean``) and, for an attack with ``target``, triggered-source indices
    (non-target, ``n_poisoned``) of the held-out half, drawn with ``seed``."""
    cidx = half[stratified_subset_indices(clean.labels[half], max(1, n_clean // clean.num_classes), seed=seed)]
    if target is None:
        return cidx, None
    pool = half[clean.labels[half] != target]
    return cidx, np.sort(np.random.default_rng(seed).permutation(pool)[:n_poisoned])


def zip_range_shares(attack, images_u8: np.ndarray, labels: np.ndarray, transforms: list[str],
                     scale: int) -> dict[str, float]:
    """Share of the trigger's perturbation energy (triggered − clean, in [0, 1] units) that lies in the range of each
    of ZIP's degradations, ``‖P δ‖² / ‖δ‖²`` with P = A⁺A (:func:`detoxops.defenses.zip.project`): the part ZIP's
    guidance puts back. 1.0 = the degradation keeps the trigger whole; 0.0 = it annihilates it."""
    from detoxops.defenses.zip import project

    keep = labels != attack.target  # the attack triggers non-target images only
    triggered, _, _ = attack.poison_test_arrays(images_u8[keep], labels[keep])
    delta = to_tensor(np.asarray(triggered)) - to_tensor(np.asarray(images_u8[keep]))
    total = float(delta.pow(2).sum())
    return {kind: float(project(delta, kind, scale).pow(2).sum()) / max(total, 1e-12) for kind in transforms}


def range_accuracy(model, images_u8: np.ndarray, labels: np.ndarray, transforms: list[str], scale: int) -> dict:
    """The victim's accuracy (%) on the clean images and on each ZIP degradation's range part alone, P x = A⁺A x
    (grayscale for ``gray``, 2x2 block means for ``pool``): what ZIP's guidance keeps of an image; the rest its
    diffusion model has to generate."""
    from detoxops.defenses.zip import project

    x = to_tensor(np.asarray(images_u8))
    out = {"clean": percent(clean_accuracy(predict(model, images_u8), labels))}
    for kind in transforms:
        out[kind] = percent(clean_accuracy(predict(model, from_tensor(project(x, kind, scale).clamp(0, 1))), labels))
    return out


def restoration_measures(defense, model, attack, clean_u8: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """What a localising defense restores, on clean and triggered copies of the same non-target images: the share of
    pixels it noised above its lowest level (clean; trigger pixels and the rest of triggered images), its trigger
    map's AUC against the trigger's pixels, and how often the victim's label of a clean image survives it."""
    from detoxops.defenses.map_quality import changed_pixels, trigger_map_quality

    keep = labels != attack.target
    if not keep.any():
        raise ValueError(f"restoration_measures: every image is of the target class {attack.target}")
    clean_u8, labels = np.asarray(clean_u8)[keep], labels[keep]
    triggered, _, _ = attack.poison_test_arrays(clean_u8, labels)
    mask = changed_pixels(clean_u8, np.asarray(triggered))
    outs = {}
    for part, images in (("clean", clean_u8), ("triggered", np.asarray(triggered))):
        with torch.no_grad():
            o = defense(to_tensor(images), make_generator(seed))
        levels = o.maps["noise_levels"].amax(1).numpy()
        outs[part] = (o, levels > levels.min())
    (o_c, restored_c), (o_t, restored_t) = outs["clean"], outs["triggered"]
    quality = trigger_map_quality(o_t.maps["trigger_map"], o_t.maps["noise_levels"].amax(1), mask)
    return {"n_images": int(len(clean_u8)), "trigger_pixel_share": float(mask.mean()),
            "clean_pixels_restored": float(restored_c.mean()),
            "trigger_pixels_restored": float(restored_t[mask].mean()) if mask.any() else None,
            "other_pixels_restored": float(restored_t[~mask].mean()),
            "trigger_map_auc": quality["map_auc"],
            "clean_label_kept": float(np.mean(predict(model, from_tensor(o_c.images)) == predict(model, clean_u8)))}


def trigger_survival(defenses: dict, purifier, model, attack, clean_u8: np.ndarray, labels: np.ndarray, seed: int,
                     amplitudes: list[float], levels: list[int], batch: int, stride: int = 10) -> dict:
    """Why a trigger keeps firing through a defense, measured on ``clean_u8``'s non-target images x and their
    triggered copies x' = x + δ (δ as the attack applies it, clipping included):

    * ``victim_asr_at_amplitude``: the victim's ASR on x + a·δ (uint8-rounded, no defense) per fraction a: how much
      of the trigger it needs in order to fire;
    * ``defenses``: per defense, the share of δ left in its output, ⟨D(x') − D(x), δ⟩ / ‖δ‖² with the same noise for
      x and x' (1 = passed through, 0 = removed), and the ASR on D(x');
    * ``global_restoration``: per level t, ASR on x' and the victim's accuracy on x after the purifier alone noises
      every pixel to t and restores (DDIM, ``stride``), with the same share measure: the level at which the trigger
      stops firing and what that costs clean images."""
    from detoxops.diffusion.samplers import denoise

    keep = np.asarray(labels) != attack.target
    x_u8, y = np.asarray(clean_u8)[keep], np.asarray(labels)[keep]
    xt_u8 = np.asarray(attack.poison_test_arrays(x_u8, y)[0])
    x, xt = to_tensor(x_u8), to_tensor(xt_u8)
    delta = xt - x

    def share_left(out_clean: np.ndarray, out_triggered: np.ndarray) -> float:
        r = to_tensor(out_triggered) - to_tensor(out_clean)
        return float((r * delta).sum() / delta.pow(2).sum().clamp_min(1e-12))

    def asr(images_u8: np.ndarray) -> float:
        return percent(attack_success_rate(predict(model, images_u8), attack.target))

    record: dict = {"n_images": int(len(x_u8)), "target": int(attack.target),
                    "trigger_l2_per_image": float(delta.flatten(1).norm(dim=1).mean()),
                    "victim_clean_accuracy": percent(clean_accuracy(predict(model, x_u8), y)),
                    "victim_asr_at_amplitude": {str(a): asr(from_tensor(x + a * delta)) for a in amplitudes},
                    "defenses": {}, "global_restoration": {}}
    for name, defense in defenses.items():
        out_c, _, _ = defend(defense, x_u8, batch, seed, f"survival/{name}/clean")
        out_t, _, _ = defend(defense, xt_u8, batch, seed, f"survival/{name}/triggered")
        record["defenses"][name] = {"share_left": share_left(out_c, out_t), "asr": asr(out_t),
                                    "clean_accuracy": percent(clean_accuracy(predict(model, out_c), y))}
    for t in levels:
        outs = []
        for images in (x, xt):
            gen = torch.Generator().manual_seed(seed * 1009 + t)  # the same noise for x and x'
            x0 = images * 2 - 1
            noise = torch.randn(x0.shape, generator=gen)
            with torch.no_grad():
                restored = torch.cat([
                    denoise(purifier, purifier.schedule.q_sample(x0[i:i + batch], t, noise[i:i + batch]), t,
                            mode="ddim", stride=stride, generator=gen)
                    for i in range(0, len(x0), batch)])
            outs.append(from_tensor((restored.clamp(-1, 1) + 1) / 2))
        record["global_restoration"][str(t)] = {
            "share_left": share_left(*outs), "asr": asr(outs[1]),
            "clean_accuracy": percent(clean_accuracy(predict(model, outs[0]), y))}
        print(attack.name, t, record["global_restoration"][str(t)], flush=True)
    return record


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (attack, defense), rates in %."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["defense"]), []).append(r)
    out = []
    for (attack, defense), rs in groups.items():
        s = {"attack": attack, "defense": defense, "seeds": [r["seed"] for r in rs],
             "n_clean": rs[0]["n_clean"], "n_poisoned": rs[0]["n_poisoned"]}
        for k in ("ca", "pa", "asr", "images_per_s", "queries_per_image"):
            v = np.array([r[k] for r in rs], dtype=float)
            s[k], s[f"{k}_std"] = round(float(v.mean()), 2), round(float(v.std()), 2)
        paper = PAPER_TABLE1.get(attack, {}).get(PAPER_NAME.get(defense, defense))
        s["paper"] = list(paper) if paper else None
        out.append(s)
    return out


def render_markdown(records: list[dict]) -> str:
    """One table over the records' rows (several runs, e.g. a cheaper setting for one defense), each run's command
    and machine above it."""
    lines = []
    for record in records:
        lines += [f"Command: `{record['command']}`", "", f"Machine: {record['machine']}", ""]
    lines += ["CA / PA / ASR in % (mean ± std over the seeds listed; n = clean + triggered held-out images per seed); "
              "paper = SampDetox table 1 (PreAct-ResNet18 victim; `faithful` is compared with its SampDetox column).",
              "", "| attack | defense | seeds | n | CA | PA | ASR | images/s | queries / image | paper CA / PA / ASR |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [r for record in records for r in record["rows"]]
    by_n: dict[tuple, list[dict]] = {}
    for r in rows:  # a defense run at another n is its own row
        by_n.setdefault((r["n_clean"], r["n_poisoned"]), []).append(r)
    summary = sorted((s for group in by_n.values() for s in summarise(group)),
                     key=lambda s: (s["attack"], -s["n_clean"], s["defense"] != "none"))
    for s in summary:
        paper = " / ".join(f"{v:.2f}" for v in s["paper"]) if s["paper"] else "–"
        lines.append(f"| {s['attack']} | {s['defense']} | {', '.join(map(str, s['seeds']))} | "
                     f"{s['n_clean']} + {s['n_poisoned']} | {s['ca']:.1f} ± {s['ca_std']:.1f} | "
                     f"{s['pa']:.1f} ± {s['pa_std']:.1f} | {s['asr']:.1f} ± {s['asr_std']:.1f} | "
                     f"{s['images_per_s']:.3f} | {s['queries_per_image']:.0f} | {paper} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--store", default="cifar10-fast")
    ap.add_argument("--purifier", type=Path, default=SHIPPED_PURIFIER)
    ap.add_argument("--attacks", default="badnets,blended")
    ap.add_argument("--defenses", default="none,sampdetox,faithful,zip,sancdifi,bdmae")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-clean", type=int, default=50)
    ap.add_argument("--n-poisoned", type=int, default=50)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="params.yaml override, e.g. baselines.sancdifi.sampler=ddim (repeatable)")
    ap.add_argument("--cache", type=Path, default=None, help="folder for defended images (resume)")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (required but with --combine)")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--combine", type=Path, nargs="+", default=None, metavar="JSON",
                    help="only render --md from these result files (one table)")
    ap.add_argument("--explain-defenses", default="",
                    help="--explain: also measure what these localising defenses restore (restoration_measures) on "
                         "--explain-n images per attack")
    ap.add_argument("--explain-n", type=int, default=16)
    ap.add_argument("--survival", action="store_true",
                    help="only measure how much of each attack's trigger survives --explain-defenses and a global "
                         "restoration from each of --survival-levels, and the victim's ASR at fractions "
                         "--survival-amplitudes of the trigger (trigger_survival), on --n-poisoned held-out images "
                         "of seed 0; write it to --out")
    ap.add_argument("--survival-levels", default="20,60,120,200,300,400")
    ap.add_argument("--survival-amplitudes", default="0.1,0.2,0.3,0.5,0.75,1.0")
    ap.add_argument("--explain", action="store_true",
                    help="only measure the share of each attack's trigger in the range of ZIP's degradations "
                         "(on --n-clean held-out images of seed 0) and write it to --out")
    args = ap.parse_args(argv)
    if args.combine:
        text = render_markdown([json.loads(f.read_text()) for f in args.combine])
        if args.md is not None:
            args.md.parent.mkdir(parents=True, exist_ok=True)
            args.md.write_text(text)
        print(text)
        return 0
    if args.out is None:
        ap.error("--out is required")
    torch.set_num_threads(args.threads)

    params = load_params(ROOT / "params.yaml", args.overrides)
    purifier = load_purifier(args.purifier, precision=params.diffusion.precision)
    clean = clean_test(args.data)
    half = split_indices(clean, "test", len(clean), seed=0)
    names = [d for d in args.defenses.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    load_start = os.getloadavg()[0]
    victims = {a: (load_classifier(f"{args.store}/{a}").float().eval(), victim_attack(f"{args.store}/{a}"))
               for a in args.attacks.split(",") if a}

    if args.survival:
        record = {"command": shlex.join(["python", "benchmarks/baselines_cifar10.py",
                                         *(sys.argv[1:] if argv is None else argv)]),
                  "precision": params.diffusion.precision, "load_avg_1min_start": round(load_start, 2),
                  "survival": {}}
        # attacks measured by an earlier run with the same settings (whatever its --attacks) are kept, not redone
        record["settings"] = json.loads(json.dumps(vars(args) | {"attacks": None}, default=str))
        if args.out.is_file() and json.loads(args.out.read_text()).get("settings") == record["settings"]:
            record["survival"] = json.loads(args.out.read_text())["survival"]
        for a, (model, attack) in victims.items():
            if a in record["survival"]:
                continue
            _, pidx = pick(clean, half, 0, args.n_poisoned, attack.target, 0)
            defenses = {name: build_defense(name, purifier, params.sampdetox, classifier=model,
                                            baselines=params.baselines)
                        for name in filter(None, args.explain_defenses.split(","))}
            t0 = time.perf_counter()
            record["survival"][a] = trigger_survival(
                defenses, purifier, model, attack, clean.images[pidx], clean.labels[pidx], seed=0,
                amplitudes=[float(v) for v in args.survival_amplitudes.split(",")],
                levels=[int(v) for v in args.survival_levels.split(",")], batch=args.batch) | {
                "seconds": round(time.perf_counter() - t0, 1)}
            print(a, json.dumps(record["survival"][a]), flush=True)
            record["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
            _write_json(args.out, record)  # after every attack: a killed run keeps what it finished
        return 0

    if args.explain:
        z = params.baselines.zip
        cidx, _ = pick(clean, half, args.n_clean, 0, None, 0)
        shares = {a: zip_range_shares(attack, clean.images[cidx], clean.labels[cidx], list(z.transforms), z.deg_scale)
                  for a, (_, attack) in victims.items()}
        range_acc = {a: range_accuracy(model, clean.images[cidx], clean.labels[cidx], list(z.transforms), z.deg_scale)
                     for a, (model, _) in victims.items()}
        record = {"command": shlex.join(["python", "benchmarks/baselines_cifar10.py",
                                         *(sys.argv[1:] if argv is None else argv)]),
                  "n_images": int(len(cidx)), "zip_trigger_range_share": shares,
                  "victim_accuracy_on_zip_ranges": range_acc, "restoration": {},
                  "precision": params.diffusion.precision, "load_avg_1min_start": round(load_start, 2)}
        eidx, _ = pick(clean, half, args.explain_n, 0, None, 0)  # class-balanced (the split is stored by class)
        for name in filter(None, args.explain_defenses.split(",")):
            for a, (model, attack) in victims.items():
                d = build_defense(name, purifier, params.sampdetox, classifier=model, baselines=params.baselines)
                t0 = time.perf_counter()
                m = restoration_measures(d, model, attack, clean.images[eidx], clean.labels[eidx], seed=0)
                record["restoration"][f"{a}/{name}"] = m | {"seconds": round(time.perf_counter() - t0, 1)}
                print(a, name, json.dumps(record["restoration"][f"{a}/{name}"]), flush=True)
        record["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
        _write_json(args.out, record)
        print(json.dumps(shares, indent=1))
        return 0

    def run(name: str, images: np.ndarray, part: str, seed: int, classifier=None):
        d = build_defense(name, purifier if name != "none" else None, params.sampdetox, classifier=classifier,
                          baselines=params.baselines)
        keys = [f"{part}_{name}", params.sampdetox.model_dump_json(), params.baselines.model_dump_json(),
                str(args.purifier), params.diffusion.precision, str(args.batch), str(seed)]
        return cached(args.cache, keys, images, lambda: defend(d, images, args.batch, seed, f"{part}/{name}"))

    rows = []
    for seed in seeds:
        for attack_name, (model, attack) in victims.items():
            cidx, pidx = pick(clean, half, args.n_clean, args.n_poisoned, attack.target, seed)
            triggered, true_labels, _ = attack.poison_test_arrays(clean.images[pidx], clean.labels[pidx])
            for name in names:
                box = model if name.partition("-")[0] in QUERYING else None
                clean_part = f"s{seed}_{attack_name}_clean" if box is not None else f"s{seed}_clean"
                c_out, c_q, c_s = run(name, clean.images[cidx], clean_part, seed, box)
                p_out, p_q, p_s = run(name, triggered, f"s{seed}_{attack_name}_triggered", seed + 1, box)
                pc, pp = predict(model, c_out), predict(model, p_out)
                row = {"seed": seed, "attack": attack_name, "defense": name, "target": int(attack.target),
                       "n_clean": int(len(cidx)), "n_poisoned": int(len(pidx)),
                       "ca": percent(clean_accuracy(pc, clean.labels[cidx])),
                       "pa": percent(poisoned_accuracy(pp, true_labels)),
                       "asr": percent(attack_success_rate(pp, attack.target)),
                       "images_per_s": round((len(cidx) + len(pidx)) / max(c_s + p_s, 1e-9), 4),
                       "queries_per_image": (c_q + p_q) / (len(cidx) + len(pidx))}
                print(json.dumps(row), flush=True)
                rows.append(row)

    record = {"command": shlex.join(["python", "benchmarks/baselines_cifar10.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "store": args.store, "purifier": str(args.purifier), "seeds": seeds, "n_clean": args.n_clean,
              "n_poisoned": args.n_poisoned, "split": "test (held-out half, sampdetox_eval.split_indices seed 0)",
              "victim_tta": 0, "sampdetox": params.sampdetox.model_dump(mode="json"),
              "baselines": params.baselines.model_dump(mode="json"), "precision": params.diffusion.precision,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": args.threads, "torch": torch.__version__,
                          "load_avg_1min_start": round(load_start, 2),
                          "load_avg_1min_end": round(os.getloadavg()[0], 2)},
              "rows": rows}
    record["summary"] = summarise(rows)
    _write_json(args.out, record)
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(render_markdown([record]))
    print(render_markdown([record]))
    return 0


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
