"""Import what a GPU run (benchmarks/gpu_run.py) returned: weights into ``runs/``, numbers into the results tables,
and, when it measured better, the GPU-trained purifier as the shipped CIFAR-10 default.

    .venv/bin/python benchmarks/gpu_import.py /work/.device/<files_at>          # check, import, write the tables
    .venv/bin/python benchmarks/gpu_import.py /work/.device/<files_at> --ship   # + replace the shipped purifier

What it does, in order (nothing is written until every check has passed):

1. reads ``results.json`` and checks every returned part against its recorded size and sha256, then the joined
   file's sha256 (a part lost or cut short in transfer is an error naming it);
2. rebuilds each artifact from its safetensors (nothing unpickled), checks that it computes the fingerprint the
   GPU run recorded (ε̂ / logits of a fixed seeded input, float32 on the CPU), and saves it under
   ``<runs-dir>/<run id>/``: ``purifier/`` and ``purifier_small/`` as diffusers folders (float32: the exact
   weights the GPU evaluated; ``--set diffusion.purifier=<that folder>`` uses one), ``victims/<attack>/`` as
   ``save_classifier`` folders;
3. writes ``<results-dir>/gpu_<run id>.json`` (the run's JSON plus the import record) and
   ``<docs-dir>/gpu-<run id>.md`` (the GPU rows: victims, SampDetox on the held-out split, DataElixir,
   throughput, purifier training and denoising, the timeline), each next to the device name and command;
4. ``--ship``: installs the GPU-trained shipped-preset purifier (``purifier_small``) as
   ``<assets-dir>/cifar10-32`` in fp16 with a ``training.json`` — only if its DDIM restoration PSNR, measured in
   the same run on the same images and noise, is higher than the shipped purifier's at every level (20, 120,
   300); ``--force`` ships regardless and says so in ``training.json``. The 35.7M purifier is not shipped: 68 MiB
   in fp16 would not fit the package, the repository or the GPU call's 64 MiB, and it is 36x slower on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import gpu_run  # noqa: E402 - the transport format lives with the script that writes it

DEFAULT_ASSETS = ROOT / "src" / "detoxops" / "assets" / "purifiers"
SHIP_NAME = "cifar10-32"
LEVELS = ("20", "120", "300")


class ImportError_(ValueError):
    """The returned files are incomplete or do not match results.json (the message names the file)."""


def load_results(folder: Path) -> dict:
    path = Path(folder) / gpu_run.RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (is this the folder the run returned?)")
    data = json.loads(path.read_text())
    if data.get("format") != gpu_run.RUN_FORMAT:
        raise ImportError_(f"{path}: format {data.get('format')!r}, expected {gpu_run.RUN_FORMAT}")
    return data


def run_id(results: dict) -> str:
    device = "cpu-smoke" if results.get("smoke") else results.get("device", {}).get("name", "unknown")
    slug = re.sub(r"[^a-z0-9]+", "-", str(device).lower()).strip("-")[:40]
    started = results.get("started", "")[:16].replace(":", "").replace("T", "-")
    return f"{slug}-{started}" if started else slug


# ------------------------------------------------------------------------------------------- artifacts
def rebuild(folder: Path, artifact: dict) -> tuple[Any, dict]:
    """The artifact's model object (a Purifier or a classifier) and its metadata, fingerprint checked."""
    state, meta = gpu_run.load_transport(gpu_run.read_parts(folder, artifact))
    config = json.loads(meta["config"])
    if artifact["kind"] == "purifier":
        from diffusers import UNet2DModel

        from detoxops.diffusion import NoiseSchedule, Purifier

        got = gpu_run.fingerprint_purifier(config, state)
        unet = UNet2DModel.from_config(config)
        unet.load_state_dict(state)
        model = Purifier(unet, NoiseSchedule.from_diffusers_config(json.loads(meta["scheduler"])))
    elif artifact["kind"] == "classifier":
        from detoxops.models import build_classifier

        got = gpu_run.fingerprint_classifier(config, state)
        model = build_classifier(config["arch"], config["num_classes"], config.get("in_channels", 3),
                                 config.get("image_size", 32), **gpu_run.architecture_options(config))
        model.load_state_dict(state)
        model.eval()
    else:
        raise ImportError_(f"artifact {artifact['name']}: unknown kind {artifact['kind']!r}")
    want = artifact.get("fingerprint")
    if want is None or not gpu_run.fingerprints_match(want, got):
        raise ImportError_(f"artifact {artifact['name']}: the rebuilt weights do not compute the fingerprint the "
                           f"GPU run recorded (recorded {want}, got {got})")
    return model, meta


def import_artifacts(folder: Path, results: dict, dest: Path) -> list[dict]:
    from detoxops.diffusion import save_purifier
    from detoxops.models import save_classifier

    rows = []
    built = [(a, *rebuild(folder, a)) for a in results.get("artifacts", []) if a.get("returned")]
    for artifact, model, _meta in built:  # every artifact checked before anything is written
        if artifact["kind"] == "purifier":
            target = dest / artifact["name"]
            save_purifier(model, target)
            info = results.get("purifiers", {}).get(artifact["name"]) or {}
            (target / "gpu_training.json").write_text(json.dumps({
                "run": run_id(results), "device": results["device"].get("name"), "transport": artifact["precision"],
                **{k: v for k, v in info.items() if k != "loss"}}, indent=1))
        else:
            attack = artifact["name"].removeprefix("victim-")
            target = dest / "victims" / attack
            save_classifier(model, target, meta={"run": run_id(results), "device": results["device"].get("name"),
                                                 "transport": artifact["precision"],
                                                 **(results.get("victims", {}).get(attack) or {})})
        rows.append({"name": artifact["name"], "kind": artifact["kind"], "precision": artifact["precision"],
                     "folder": str(target)})
    return rows


# --------------------------------------------------------------------------------------------- tables
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict, imported: list[dict], rid: str) -> str:
    dev = results.get("device", {})
    lines = [f"# GPU run {rid}", ""]
    if results.get("smoke"):
        lines += ["**Smoke run (toy sizes on the CPU): these numbers test the pipeline, they are not results.**", ""]
    lines += [
        f"Device: {dev.get('name')} ({dev.get('device')}; torch {dev.get('torch')}, CUDA {dev.get('cuda')}, "
        f"{dev.get('cpu_count')} CPU cores; `{dev.get('nvidia_smi') or '-'}`).",
        f"Command: `{results.get('command')}` (started {results.get('started')}, {results.get('elapsed_s')} s, "
        f"status: {results.get('status')}).",
        f"Code: sha256 {str(results.get('code_sha256'))[:16]}…, bundle commit "
        f"{((results.get('bundle') or {}).get('code') or {}).get('git_commit')}.",
        "Imported with `benchmarks/gpu_import.py`; every number below was measured in that one run.", "",
        "## Timeline", "", "| stage | status | start (s) | seconds | peak GPU memory (GiB) |", "|---|---|---|---|---|",
    ]
    for e in results.get("timeline", []):
        seconds = _fmt(e.get("seconds")) if "joined_after_s" not in e else f"joined after {e['joined_after_s']}"
        lines.append(f"| {e['stage']} | {e.get('status')} | {_fmt(e.get('start_s'))} | {seconds} | "
                     f"{_fmt(e.get('peak_gpu_memory_gib'), 2)} |")
    lines += ["", "## Purifiers", "", "| purifier | params | steps | images seen | train s | images/s | "
              "max_t | transport |", "|---|---|---|---|---|---|---|---|"]
    for name, p in (results.get("purifiers") or {}).items():
        if not p:
            continue
        lines.append(f"| {name} | {p.get('params'):,} | {p.get('steps')} | {p.get('images_seen'):,} | "
                     f"{_fmt(p.get('train_seconds'))} | {_fmt(p.get('images_per_s'))} | "
                     f"{(p.get('train') or {}).get('max_t')} | {p.get('transport')} |")
    den = (results.get("denoising") or {}).get("purifiers") or {}
    if den:
        lines += ["", f"Denoising (DDIM stride 20, {results['denoising']['n']} test images, PSNR dB: noisy / one-shot "
                  "x̂0 / restored):", "", "| purifier | " + " | ".join(f"t = {t}" for t in LEVELS) + " |",
                  "|---|" + "---|" * len(LEVELS)]
        for name, levels in den.items():
            cells = [f"{levels[t]['psnr_noisy']:.2f} / {levels[t]['psnr_x0_oneshot']:.2f} / "
                     f"{levels[t].get('psnr_restored', float('nan')):.2f}" for t in LEVELS if t in levels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    big = (results.get("purifiers") or {}).get("purifier") or {}
    if big.get("psnr_before_transport"):
        lines += ["", f"Transport ({big.get('transport')}): one-shot PSNR before "
                  f"{big['psnr_before_transport']} and after {big.get('psnr_after_transport')} (dB per level); "
                  "every number on this page uses the weights after transport."]
    lines += ["", "## Victims", "", "| attack | arch | epochs | CA | PA | ASR | train s | images/s | returned |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, v in (results.get("victims") or {}).items():
        if v.get("status") != "done":
            lines.append(f"| {name} | – | – | – | – | – | – | – | {v.get('status')}: {v.get('reason', '')} |")
            continue
        lines.append(f"| {name} | {v.get('arch')} | {v.get('epochs')} | {_fmt(v.get('ca'))} | {_fmt(v.get('pa'))} | "
                     f"{_fmt(v.get('asr'))} | {_fmt(v.get('train_seconds'))} | {_fmt(v.get('images_per_s'))} | "
                     f"{v.get('transport') or 'no'} |")
    sd = results.get("sampdetox") or {}
    if sd.get("rows"):
        lines += ["", "## SampDetox on the held-out split", "",
                  f"Split: {sd.get('split')}. Sampler {sd.get('sampler')}; status {sd.get('status')}.", "",
                  "| victim | setting | clean n | CA | triggered n | PA | ASR |", "|---|---|---|---|---|---|---|"]
        for r in sd["rows"]:
            lines.append(f"| {r['victim']} | {r['setting']} | {r['n_clean']} | {_fmt(r['ca'])} | "
                         f"{r.get('n_triggered', '–')} | {_fmt(r.get('pa'))} | {_fmt(r.get('asr'))} |")
    el = results.get("dataelixir") or {}
    if el:
        lines += ["", "## DataElixir", "", f"Subset: {el.get('subset')}; settings T {el['config']['T']}, rounds "
                  f"{el['config']['rounds']}, sampler {el['config']['sampler']}.", "",
                  "| attack | n | poisoned | target found (true) | TPR | FPR | poisoned labels restored | seconds |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {el['attack']} | {el['n']} | {el['poisoned']} | {el['target_labels']} ({el['true_target']}) | "
                  f"{_fmt(el['tpr'])} | {_fmt(el['fpr'])} | {_fmt(el['poisoned_label_restored'])} | "
                  f"{_fmt(el['seconds'])} |"]
    tp = results.get("throughput") or {}
    if tp:
        lines += ["", f"## Throughput (batch {tp.get('batch')}, {tp.get('settings')})", "",
                  "| what | images/s |", "|---|---|",
                  f"| UNet forward passes | {_fmt(tp.get('unet_passes_per_s'))} |",
                  f"| classifier | {_fmt(tp.get('classifier_images_per_s'))} |"]
        for key, row in tp.items():
            if isinstance(row, dict) and key.startswith(("sampdetox_", "dataelixir_")):
                lines.append(f"| {key} | {_fmt(row.get('images_per_s'), 2) if 'images_per_s' in row else row} |")
    tc = results.get("throughput_compiled") or {}
    if tc:
        lines += ["", f"torch.compile: {tc}"]
    lines += ["", "## Files", "", "| artifact | precision | imported to |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['precision']} | `{r['folder']}` |" for r in imported]
    lines += [f"| {a['name']} | not returned | {a.get('reason', '')} |" for a in results.get("artifacts", [])
              if not a.get("returned")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- ship
def ship_decision(results: dict) -> tuple[bool, str]:
    den = (results.get("denoising") or {}).get("purifiers") or {}
    new, old = den.get("purifier_small"), den.get("shipped")
    if not new:
        return False, "the run has no denoising numbers for purifier_small"
    if not old:
        return True, "no shipped purifier was measured against (none shipped)"
    worse = [t for t in LEVELS if new[t]["psnr_restored"] <= old[t]["psnr_restored"]]
    summary = ", ".join(f"t={t}: {new[t]['psnr_restored']:.2f} vs {old[t]['psnr_restored']:.2f} dB" for t in LEVELS)
    if worse:
        return False, f"not better at t = {', '.join(worse)} ({summary})"
    return True, f"better at every level ({summary})"


def ship(results: dict, runs_folder: Path, assets_dir: Path, reason: str, forced: bool) -> Path:
    from detoxops.diffusion import load_purifier, save_purifier

    source = runs_folder / "purifier_small"
    purifier = load_purifier(source)
    dest = assets_dir / SHIP_NAME
    save_purifier(purifier, dest, fp16=True)  # fp16 is exact: it travelled as fp16
    info = results["purifiers"]["purifier_small"]
    den = results["denoising"]
    training = {
        "trained_with": f"benchmarks/gpu_run.py on {results['device'].get('name')} (run {run_id(results)}, "
                        f"command `{results.get('command')}`)",
        "exported_with": f"benchmarks/gpu_import.py --ship{' --force' if forced else ''}",
        "data": info.get("data"), "steps": info.get("steps"), "batch_size": info["train"]["batch_size"],
        "max_t": info["train"]["max_t"], "train_seconds": info.get("train_seconds"), "params": info.get("params"),
        "hardware": f"{results['device'].get('name')}, shared with the run's other training for its time box",
        "ship_rule": "DDIM restoration PSNR higher than the previously shipped purifier at t = 20, 120 and 300, "
                     "same images and noise, same run",
        "ship_decision": reason, "forced": forced,
        "denoising": {"n": den["n"], "mode": den["mode"], "stride": den["stride"],
                      "levels": den["purifiers"]["purifier_small"],
                      "previous_shipped": den["purifiers"].get("shipped")},
    }
    tmp = dest / ".training.json.tmp"
    tmp.write_text(json.dumps(training, indent=1))
    os.replace(tmp, dest / "training.json")
    return dest


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("returned", type=Path, help="the folder holding results.json and the returned files")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "gpu")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--docs-dir", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("--assets-dir", type=Path, default=DEFAULT_ASSETS)
    ap.add_argument("--ship", action="store_true", help="install purifier_small as the shipped cifar10-32 if better")
    ap.add_argument("--force", action="store_true", help="with --ship: ship even if not measured better")
    args = ap.parse_args(argv)
    results = load_results(args.returned)
    rid = run_id(results)
    runs_folder = args.runs_dir / rid
    staging = args.runs_dir / f".{rid}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        imported = import_artifacts(args.returned, results, staging)
        if runs_folder.exists():
            shutil.rmtree(runs_folder)
        os.replace(staging, runs_folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for row in imported:
        row["folder"] = row["folder"].replace(str(staging), str(runs_folder))
    record = {"imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run_id": rid, "artifacts": imported}
    shipped = None
    if args.ship:
        ok, reason = ship_decision(results)
        if not ok and not args.force:
            print(f"not shipped: {reason} (--force ships anyway)", file=sys.stderr)
        else:
            shipped = ship(results, runs_folder, args.assets_dir, reason, forced=not ok)
            print(f"shipped {shipped}: {reason}")
        record["ship"] = {"decision": reason, "shipped_to": str(shipped) if shipped else None}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    gpu_run.write_json(args.results_dir / f"gpu_{rid}.json", {**results, "import": record})
    md = args.docs_dir / f"gpu-{rid}.md"
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(markdown(results, imported, rid))
    os.replace(tmp, md)
    print(f"imported {len(imported)} artifacts into {runs_folder}; tables: {md}; JSON: "
          f"{args.results_dir / f'gpu_{rid}.json'}")
    return 0 if (not args.ship or shipped is not None or args.force) else 2


if __name__ == "__main__":
    raise SystemExit(main())
