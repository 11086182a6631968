"""Which demo settings make both defenses visibly work within the demo's time budget? Measured as a user meets them.

    nice -n 10 .venv/bin/python benchmarks/demo_settings.py --candidates ddim4 ddpm-T40-r3 ddpm-T40-r2
    nice -n 10 .venv/bin/python benchmarks/demo_settings.py --candidates demo --repeat 3    # the chosen overlay

Every run is ``python -m flows.demo`` in a **fresh clone** of this repository's committed ``HEAD`` (``--ref``): no
cached Prefect results, no stored dataset versions, its own MLflow database, DVC remote and temporary Prefect
server, exactly the first ``make demo`` a new user sees — except ``make setup``: the clone's ``.venv`` is a link to
this checkout's (``PYTHONPATH`` puts the clone's ``src`` first, so the clone's code is what runs). Setup is timed
separately (``--setup``: ``make setup`` in a clone with an empty venv) because it does not depend on the settings.

A candidate is a list of ``--set`` overrides applied on top of the demo overlay (``params.demo.yaml``) of that
commit; ``demo`` is the overlay alone. Per run the wall time of the whole command (interpreter start, temporary
Prefect server, every task) is recorded with the 1-minute load average before and after (the CPU is shared), and
the results table the flow wrote (``runs/demo/results.csv``) is read back: SampDetox (default profile) CA / ASR
against no defense, DataElixir TPR / FPR and the retrained model's CA / ASR, each checked against the bounds of
issue 28 (TPR >= 90, FPR <= 2, retrained ASR <= 5, SampDetox ASR <= 10 with CA within 3 points of no defense).

Resumable: a (candidate, repeat) whose result is already in ``--out-json`` is kept, not re-run.
Writes ``benchmarks/results/demo_settings_digits_cpu.json`` and ``docs/results/demo-settings-digits-cpu.md``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# --set overrides on top of params.demo.yaml; the sampler settings behind each name are recorded with the result
CANDIDATES: dict[str, list[str]] = {
    "demo": [],
    "ddim4": ["dataelixir.sampler=ddim", "dataelixir.ddim_stride=4", "dataelixir.T=40", "dataelixir.rounds=3",
              "dataelixir.keep_last=5"],
    "ddpm-T40-r3": ["dataelixir.sampler=ddpm", "dataelixir.T=40", "dataelixir.rounds=3", "dataelixir.keep_last=5"],
    "ddpm-T40-r2": ["dataelixir.sampler=ddpm", "dataelixir.T=40", "dataelixir.rounds=2", "dataelixir.keep_last=5"],
    "ddpm-T30-r2": ["dataelixir.sampler=ddpm", "dataelixir.T=30", "dataelixir.rounds=2", "dataelixir.keep_last=5"],
    "ddpm-T30-r3": ["dataelixir.sampler=ddpm", "dataelixir.T=30", "dataelixir.rounds=3", "dataelixir.keep_last=5"],
    "ddpm-T20-r3": ["dataelixir.sampler=ddpm", "dataelixir.T=20", "dataelixir.rounds=3", "dataelixir.keep_last=5"],
    "ddpm-T20-r2": ["dataelixir.sampler=ddpm", "dataelixir.T=20", "dataelixir.rounds=2", "dataelixir.keep_last=5"],
    # fewer rounds, more kept intermediaries: the same UNet passes as r2, more candidates for eta to reach tau
    "ddpm-T40-r2-k8": ["dataelixir.sampler=ddpm", "dataelixir.T=40", "dataelixir.rounds=2", "dataelixir.keep_last=8"],
    "ddpm-T30-r2-k8": ["dataelixir.sampler=ddpm", "dataelixir.T=30", "dataelixir.rounds=2", "dataelixir.keep_last=8"],
}
STARTUP_TIMEOUT_S = 600  # the temporary Prefect server's start (see clean_env)
BOUNDS = {"tpr_min": 90.0, "fpr_max": 2.0, "retrained_asr_max": 5.0, "sampdetox_asr_max": 10.0,
          "sampdetox_ca_drop_max": 3.0}


def parse_candidate(text: str) -> tuple[str, list[str]]:
    """A named candidate, or ``NAME:key=value,key=value`` (overrides on top of the demo overlay)."""
    if text in CANDIDATES:
        return text, CANDIDATES[text]
    name, sep, sets = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"candidate {text!r}: expected one of {sorted(CANDIDATES)} or NAME:key=value,key=value")
    overrides = [s for s in sets.split(",") if s]
    bad = [s for s in overrides if "=" not in s]
    if bad:
        raise argparse.ArgumentTypeError(f"candidate {text!r}: {bad[0]!r} is not key=value")
    return name, overrides


def cpu_of_children() -> float:
    """User + system CPU seconds of finished child processes: less sensitive to a shared CPU than wall time
    (a run that waits for the CPU does not accrue it), so runs under different loads stay comparable."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summary_lines(log: str) -> list[str]:
    """The demo's closing one-line-per-defense summaries, wherever Prefect's log prefix put them."""
    out = []
    for line in log.splitlines():
        hits = [line.find(m) for m in ("SampDetox (", "DataElixir: ", "See them on the dashboard") if m in line]
        if hits:
            out.append(line[min(hits):])
    return out


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "gpu": None}


def fresh_clone(ref: str, dest: Path) -> str:
    """A clone of ``ref`` at ``dest`` with this checkout's venv linked in; returns the commit."""
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", ref], check=True)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def clean_env(repo: Path) -> dict[str, str]:
    """The user's environment minus anything pointing at this checkout's Prefect / MLflow state."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "DETOXOPS_")) and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(repo / "src")  # ahead of the venv's editable path to this checkout's src
    # the flows' 90 s default for the temporary Prefect server's start is too short on a CPU at load ~20 (measured:
    # two runs failed with "Timed out while attempting to connect to ephemeral Prefect API server"); waiting
    # longer changes nothing when it starts in time
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = str(STARTUP_TIMEOUT_S)
    return env


def read_table(path: Path) -> dict[str, dict]:
    with path.open() as f:
        rows = list(csv.DictReader(f))

    def num(v: str) -> float | None:
        return float(v) if v not in ("", None) else None

    return {r["defense"]: {k: num(r[k]) for k in ("ca", "pa", "asr", "tpr", "fpr")} for r in rows}


def score(table: dict[str, dict]) -> dict:
    none, sd = table["none"], table["sampdetox"]
    de = next(v for k, v in table.items() if k.startswith("dataelixir"))
    row = {"none_ca": none["ca"], "none_asr": none["asr"], "sampdetox_ca": sd["ca"], "sampdetox_asr": sd["asr"],
           "faithful_asr": table.get("faithful", {}).get("asr"), "tpr": de["tpr"], "fpr": de["fpr"],
           "retrained_ca": de["ca"], "retrained_asr": de["asr"]}
    b = BOUNDS
    row["meets"] = {
        "tpr": de["tpr"] is not None and de["tpr"] >= b["tpr_min"],
        "fpr": de["fpr"] is not None and de["fpr"] <= b["fpr_max"],
        "retrained_asr": de["asr"] <= b["retrained_asr_max"],
        "sampdetox_asr": sd["asr"] <= b["sampdetox_asr_max"],
        "sampdetox_ca": none["ca"] - sd["ca"] <= b["sampdetox_ca_drop_max"],
    }
    row["meets_all"] = all(row["meets"].values())
    return row


def run_demo(name: str, overrides: list[str], repeat: int, args, work: Path) -> dict:
    entry = work / f"{name}-{repeat}"
    if entry.exists():
        shutil.rmtree(entry)
    entry.mkdir(parents=True)
    repo = entry / "repo"
    commit = fresh_clone(args.ref, repo)
    cmd = [str(repo / ".venv" / "bin" / "python"), "-m", "flows.demo"]
    for o in overrides:
        cmd += ["--set", o]
    log = entry / "demo.log"
    load_before = load1()
    cpu_before = cpu_of_children()
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=repo, env=clean_env(repo), stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    row = {"candidate": name, "repeat": repeat, "overrides": overrides, "commit": commit, "exit_code": proc.returncode,
           "seconds": round(seconds, 1), "cpu_seconds": round(cpu_of_children() - cpu_before, 1),
           "prefect_startup_timeout_s": STARTUP_TIMEOUT_S,
           "load1_before": load_before, "load1_after": load1(), "log": str(log)}
    if proc.returncode != 0:
        row["error"] = log.read_text()[-2000:]
        return row
    row |= score(read_table(repo / "runs" / "demo" / "results.csv"))
    row["summary_lines"] = summary_lines(log.read_text())
    if not args.keep:
        shutil.rmtree(repo)
    return row


def time_setup(args, work: Path) -> dict:
    """``make setup`` in a fresh clone (a new venv, pip from the local wheel store / registry cache)."""
    entry = work / "setup"
    if entry.exists():
        shutil.rmtree(entry)
    entry.mkdir(parents=True)
    repo = entry / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", args.ref], check=True)
    load_before = load1()
    t0 = time.perf_counter()
    with (entry / "setup.log").open("w") as f:
        proc = subprocess.run(["make", "setup"], cwd=repo, stdout=f, stderr=subprocess.STDOUT,
                              env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    row = {"candidate": "make setup", "repeat": 0, "exit_code": proc.returncode,
           "seconds": round(time.perf_counter() - t0, 1), "load1_before": load_before, "load1_after": load1()}
    if not args.keep:
        shutil.rmtree(repo)
    return row


def candidate_grid(args, work: Path) -> list[dict]:
    """DataElixir's detection on the demo's own poisoned set and victim for every (rounds, keep_last) up to
    ``--grid-rounds`` / ``--grid-keep`` at one DDPM level ``T``, from **one** candidate run.

    Exact, not an approximation: a round's noise is drawn from the shard's generator before and during its reverse
    steps, whatever ``keep_last`` is, so the first r rounds of an R-round run are the r-round run, and the last k of
    its K kept steps are the k-step run. (Measured once to differ: in bf16, the 4-round slice of a 5-round run found
    65 / 72 where the fresh-clone 4-round demo found 64, docs/platform.md; the 3-round slice matched.) Stages 2-4 (transitions, target label, purification, relabelling) are
    DataElixir's own (``DataElixir.sanitize``), fed the sliced candidates; a model is retrained on every purified
    set that meets TPR / FPR (the demo's recipe), and its ASR measured on the demo's triggered test images.
    Times here are not demo times (one run serves every cell): the UNet passes per image are the cost."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))  # flows / tasks: the demo's own code
    from detoxops.config import load_params
    from detoxops.data import load_version
    from detoxops.defenses.dataelixir import DataElixir
    from detoxops.defenses.elixir.candidates import build_candidates
    from detoxops.defenses.elixir.purify import select_at_percentile
    from detoxops.diffusion import load_purifier
    from detoxops.metrics import attack_success_rate, clean_accuracy, detection_rates
    from detoxops.models import build_classifier, load_classifier, predict, train_classifier
    from tasks import DEMO_OVERLAY
    from tasks.attack_tasks import poison_dataset
    from tasks.data_tasks import ingest_dataset
    from tasks.purifier_tasks import get_purifier
    from tasks.victim_tasks import train_victim

    T, R, K = args.grid_T, max(args.grid_rounds), max(args.grid_keep)  # noqa: N806 - the paper's names
    params = load_params(ROOT / "params.yaml", [
        "dataelixir.sampler=ddpm", f"dataelixir.T={T}", f"dataelixir.rounds={R}", f"dataelixir.keep_last={K}",
        *args.grid_set], overlay=DEMO_OVERLAY)
    root = work / "grid"
    attack_cfg = params.attack.model_dump(mode="json")
    # the demo's own tasks (their plain functions, no Prefect): the same poisoned set and victim as `make demo`
    ingested = ingest_dataset.fn(params.data.source, params.data.model_dump(mode="json"), str(root / "data"))
    poisoned = poison_dataset.fn(ingested["path"], attack_cfg, str(root / "data"))
    victim_cfg = params.victim.model_dump(mode="json")
    # train_victim's own folder key (tasks/victim_tasks.py): a re-run reuses the victim instead of retraining it
    key = hashlib.sha256(json.dumps([poisoned["path"], "train", victim_cfg, attack_cfg], sort_keys=True).encode())
    victim_dir = root / "victims" / key.hexdigest()[:12]
    victim_info = ({"path": str(victim_dir)} if (victim_dir / "model.safetensors").is_file()
                   else train_victim.fn(poisoned["path"], victim_cfg, attack_cfg, str(root / "victims")))
    purifier_info = get_purifier.fn(params.diffusion.model_dump(mode="json"), ingested["path"],
                                    str(root / "purifiers"))
    splits = load_version(poisoned["path"])
    train, triggered, clean_test = splits["train"], splits["test"], splits["clean_test"]
    victim = load_classifier(victim_info["path"]).eval()
    purifier = load_purifier(purifier_info["path"], precision=params.diffusion.precision)
    cfg = params.dataelixir.resolved(purifier.image_size)
    cache = root / f"candidates-T{T}-r{R}-k{K}-{params.diffusion.precision}.npz"
    t0 = time.perf_counter()
    if cache.is_file():
        full = dict(np.load(cache))
    else:  # DataElixir.candidate_sets' loop (one generator per shard, same batches), keeping every candidate image
        parts: dict[str, list] = {"labels": [], "distances": [], "images": []}
        for k, start in enumerate(range(0, len(train), cfg.shard_size)):
            gen = torch.Generator(device=purifier.device).manual_seed(cfg.seed * 100_003 + k)
            stop = min(start + cfg.shard_size, len(train))
            for b in range(start, stop, cfg.batch_size):
                x01 = torch.from_numpy(np.array(train.images[b:min(b + cfg.batch_size, stop)])).permute(0, 3, 1, 2)
                cand = build_candidates(purifier, victim, x01.float().div(255), cfg, gen)
                parts["labels"].append(cand.labels.numpy().astype(np.int16))
                parts["distances"].append(cand.distances.numpy().astype(np.float32))
                parts["images"].append((cand.images.permute(0, 1, 3, 4, 2) * 255).round().clamp(0, 255)
                                       .to(torch.uint8).numpy())
                print(f"grid candidates: {min(b + cfg.batch_size, stop)} / {len(train)}", flush=True)
        full = {key: np.concatenate(v) for key, v in parts.items()}
        np.savez(cache, **full)
    candidate_seconds = time.perf_counter() - t0
    poisoned_truth = np.asarray(train.poisoned, dtype=bool)
    # in % like the demo's table (detoxops.metrics returns fractions)
    victim_asr = 100 * attack_success_rate(predict(victim, triggered.images), params.attack.target)
    victim_ca = 100 * clean_accuracy(predict(victim, clean_test.images), clean_test.labels)

    class Sliced(DataElixir):
        def __init__(self, cand: dict, *a, **kw):
            super().__init__(*a, **kw)
            self._cand = cand

        def candidate_sets(self, *a, **kw):
            return self._cand

    rows = []
    for r in sorted(args.grid_rounds):
        for k in sorted(args.grid_keep):
            cols = np.concatenate([np.arange(i * K + K - k, i * K + K) for i in range(r)])
            dist = full["distances"][:, cols]
            sel = select_at_percentile(dist, cfg.select_percentile)
            cand = {"labels": full["labels"][:, cols], "distances": dist, "selected": sel.astype(np.int16),
                    "images": full["images"][:, cols][np.arange(len(sel)), sel]}
            sub = cfg.model_copy(update={"rounds": r, "keep_last": k})
            t1 = time.perf_counter()
            res = Sliced(cand, purifier, sub, params.victim.model_copy(update={"epochs": sub.relabel_epochs})
                         ).sanitize(train, victim, root / "unused", progress=False)
            tpr, fpr = (100 * v for v in detection_rates(train.labels, res.dataset.labels, train.poisoned))
            row = {"candidate": f"grid ddpm-T{T}-r{r}-k{k}", "T": T, "rounds": r, "keep_last": k,
                   "precision": params.diffusion.precision, "n_train": int(len(train)),
                   "unet_passes_per_image": r * T, "target_labels": res.target_labels,
                   "n_poisoned": int(np.sum(poisoned_truth)), "n_found": int(np.sum(res.flagged & poisoned_truth)),
                   "tpr": tpr, "fpr": fpr, "victim_ca": victim_ca, "victim_asr": victim_asr,
                   "stages_2_4_seconds": round(time.perf_counter() - t1, 1)}
            if tpr >= BOUNDS["tpr_min"] and fpr <= BOUNDS["fpr_max"] or args.grid_retrain_all:
                model = build_classifier(params.victim.arch, train.num_classes, 3, train.images.shape[1],
                                         seed=params.victim.seed, width=params.victim.width)
                train_classifier(model, res.dataset, params.victim, progress=False)
                row |= {"retrained_ca": 100 * clean_accuracy(predict(model, clean_test.images), clean_test.labels),
                        "retrained_asr": 100 * attack_success_rate(predict(model, triggered.images),
                                                                   params.attack.target)}
            print(json.dumps(row, default=float), flush=True)
            rows.append(row)
    for row in rows:
        row |= {"candidate_seconds": round(candidate_seconds, 1), "load1_after_candidates": load1()}
    return rows


def markdown(result: dict) -> str:
    def f(v, fmt="{:.1f}"):
        return "–" if v is None else fmt.format(v)

    m = result["machine"]
    lines = [
        "# Demo settings on digits (CPU): run time against what the demo shows",
        "",
        "Command: `python benchmarks/demo_settings.py …` as recorded per row in "
        "`benchmarks/results/demo_settings_digits_cpu.json` (the candidates' overrides are in the table).",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, no GPU; shared with other jobs, so every time "
        "carries the 1-minute load average before / after it.",
        "Each run: `python -m flows.demo --set …` in a fresh clone (no cache, no stored data), wall time of the "
        "whole command; seeds fixed (params.yaml's). CA / ASR on 200 test images per split, TPR / FPR on the "
        "demo's training images (all 1,438 before the 72-per-class overlay, 720 since), in %. Bounds: TPR ≥ 90, FPR ≤ 2, retrained ASR ≤ 5, SampDetox ASR ≤ 10 with CA "
        "within 3 points of no defense. The temporary Prefect server may take up to 600 s to start in these runs "
        "(the flows' own default, 90 s, made two runs at load ~19 fail: those rows say so).",
        "",
        "| candidate | overrides on the demo's budgets | commit | flow s (CPU s) | load before / after | none CA / ASR "
        "| SampDetox CA / ASR | DataElixir TPR / FPR | retrained CA / ASR | all bounds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["candidate"] == "make setup":
            continue
        sets = ", ".join(o.removeprefix("dataelixir.") for o in r.get("overrides", [])) or "(overlay only)"
        if r.get("exit_code"):
            errors = [ln.strip() for ln in r.get("error", "").splitlines() if "Error" in ln]
            why = errors[-1][:110] if errors else f"exit {r['exit_code']}"
            lines.append(f"| {r['candidate']} #{r['repeat']} | {sets} | {r['commit'][:8]} | {r['seconds']:.0f} "
                         f"({f(r.get('cpu_seconds'), '{:.0f}')}) | {r['load1_before']} / {r['load1_after']} | "
                         f"failed: {why} | | | | no |")
            continue
        lines.append(
            f"| {r['candidate']} #{r['repeat']} | {sets} | {r['commit'][:8]} | {r['seconds']:.0f} "
            f"({f(r.get('cpu_seconds'), '{:.0f}')}) | "
            f"{r['load1_before']} / {r['load1_after']} | {f(r['none_ca'])} / {f(r['none_asr'])} | "
            f"{f(r['sampdetox_ca'])} / {f(r['sampdetox_asr'])} | {f(r['tpr'])} / {f(r['fpr'])} | "
            f"{f(r['retrained_ca'])} / {f(r['retrained_asr'])} | "
            + ("**yes**" if r["meets_all"] else "no: " + ", ".join(k for k, ok in r["meets"].items() if not ok))
            + " |")
    grid = result.get("grid") or []
    if grid:
        g = grid[0]
        lines += ["", f"### One DDPM candidate run, sliced: every (rounds, keep_last) at T = {g['T']}", "",
                  "The demo's own poisoned set and victim (victim CA {:.1f}, ASR {:.1f} on the triggered test "
                  "images); one candidate run at the largest rounds / keep_last ({:.0f} s, load {} after), then "
                  "DataElixir's stages 2-4 on each prefix (exactly what that setting would compute). Retrained CA "
                  "/ ASR only where TPR / FPR meet the bounds.".format(g["victim_ca"], g["victim_asr"],
                                                                     g["candidate_seconds"], g["load1_after_candidates"]),
                  "", "| rounds | keep_last | UNet passes / image | target | found / poisoned | TPR | FPR "
                      "| retrained CA / ASR |", "|---|---|---|---|---|---|---|---|"]
        for r in grid:
            lines.append(f"| {r['rounds']} | {r['keep_last']} | {r['unet_passes_per_image']} | "
                         f"{', '.join(map(str, r['target_labels'])) or 'none'} | {r['n_found']} / {r['n_poisoned']} | "
                         f"{f(r['tpr'])} | {f(r['fpr'])} | {f(r.get('retrained_ca'))} / {f(r.get('retrained_asr'))} |")
    setups = [r for r in result["rows"] if r["candidate"] == "make setup"]
    for r in setups:
        lines += ["", f"`make setup` in a fresh clone: {r['seconds']:.0f} s (exit {r['exit_code']}, load "
                      f"{r['load1_before']} / {r['load1_after']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", nargs="+", type=parse_candidate, default=[parse_candidate("demo")],
                    help=f"named ({', '.join(CANDIDATES)}) or NAME:key=value,key=value")
    ap.add_argument("--repeat", type=int, default=1, help="runs per candidate (repeats 0 .. N-1)")
    ap.add_argument("--setup", action="store_true", help="also time `make setup` in a fresh clone")
    ap.add_argument("--ref", default="HEAD", help="commit of this repository to clone")
    ap.add_argument("--rerun", action="store_true", help="re-run candidates already in --out-json")
    ap.add_argument("--grid", action="store_true", help="instead of demo runs: the sliced (rounds, keep_last) grid")
    ap.add_argument("--grid-T", type=int, default=40)
    ap.add_argument("--grid-rounds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--grid-keep", type=int, nargs="+", default=[3, 5, 8, 10])
    ap.add_argument("--grid-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="--grid: more overrides on the overlay, e.g. diffusion.precision=native")
    ap.add_argument("--grid-retrain-all", action="store_true", help="retrain on every cell, not only passing ones")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for --grid (default: torch's)")
    ap.add_argument("--render", action="store_true", help="only rewrite --out-md from --out-json")
    ap.add_argument("--keep", action="store_true", help="keep each run's clone (data, runs, MLflow database)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "detoxops-demo-settings"))
    ap.add_argument("--out-json", default=str(RESULTS / "demo_settings_digits_cpu.json"))
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "results" / "demo-settings-digits-cpu.md"))
    args = ap.parse_args(argv)
    out = Path(args.out_json)
    command = "python benchmarks/demo_settings.py " + " ".join(sys.argv[1:] if argv is None else argv)
    work = Path(args.work)

    def stored() -> dict:
        return json.loads(out.read_text()) if out.is_file() else {"rows": []}

    def write(update) -> None:
        """Re-read, update, write (temp + rename): another invocation may have added rows meanwhile."""
        result = stored() | {"machine": machine(), "bounds": BOUNDS}
        update(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1, default=float))
        tmp.replace(out)
        md = Path(args.out_md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md_tmp = md.with_suffix(f".{os.getpid()}.tmp")
        md_tmp.write_text(markdown(result))
        md_tmp.replace(md)

    def save(row: dict) -> None:
        key = (row["candidate"], row["repeat"])
        row["command"] = command

        def update(result: dict) -> None:
            result["rows"] = [r for r in result["rows"] if (r["candidate"], r["repeat"]) != key] + [row]

        write(update)
        print(json.dumps({k: v for k, v in row.items() if k not in ("error", "log")}), flush=True)

    if args.render:
        write(lambda result: None)
        return 0
    if args.grid:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        rows = [r | {"command": command} for r in candidate_grid(args, work)]

        def update(result: dict) -> None:
            result["grid"] = [r for r in result.get("grid", []) if r["T"] != args.grid_T] + rows

        write(update)
        return 0
    if args.setup:
        save(time_setup(args, work))
    done = {(r["candidate"], r["repeat"]) for r in stored()["rows"] if not r.get("exit_code")}
    for name, overrides in args.candidates:
        for i in range(args.repeat):
            if (name, i) in done and not args.rerun:
                continue
            save(run_demo(name, overrides, i, args, work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
