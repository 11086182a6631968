"""`detoxops attack` — list the attacks, or poison a dataset with the one ``params.attack`` names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from detoxops.commands._common import fail, params_from_cli
from detoxops.commands._options import PARAMS_OPTION, PROGRESS_OPTION, SET_OPTION

attack_app = typer.Typer(help="Backdoor attacks (BackdoorBench defaults): list them, poison a dataset.",
                         no_args_is_help=True)


@attack_app.command("list")
def list_attacks() -> None:
    """Print every registered attack with its kind, label type and default options."""
    from detoxops.attacks import registry

    for name in registry.available():
        cls = registry.get(name)
        flags = [cls.kind, "clean-label" if cls.clean_label else "dirty-label"]
        if cls.needs_fit:
            flags.append("fit: surrogate model" if cls.needs_model else "fit: trains its own generator")
        defaults = json.dumps(cls.Options().model_dump(mode="json"))
        typer.echo(f"{name:10s} {', '.join(flags):45s} {defaults}")


def _surrogate(path: Path | None, train: Any, params: Any) -> Any:
    """A clean classifier for attacks that fit on one (LF): loaded from ``path`` or trained on the clean set."""
    try:
        from detoxops.models import build_victim, load_classifier, train_classifier
    except ImportError as exc:
        fail(f"this attack needs a clean surrogate classifier but detoxops.models is unavailable: {exc}")
    if path is not None:
        if not path.exists():
            fail(f"surrogate classifier not found: {path}")
        loaded = load_classifier(path)
        return loaded[0] if isinstance(loaded, tuple) else loaded
    victim = params.victim.for_image_size(int(train.images.shape[1]), len(train))
    typer.echo(f"training a clean surrogate classifier ({victim.arch}, {victim.epochs} epochs)…")
    model = build_victim(victim, train.num_classes, in_channels=3, image_size=int(train.images.shape[1]))
    result = train_classifier(model, train, victim)
    import torch

    if isinstance(result, torch.nn.Module):
        return result
    return getattr(result, "model", model)


@attack_app.command("run")
def run(
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="folder to write train/, test/, attack.json into"),
    attack_name: str = typer.Option(None, "--attack", "-a", help="attack name (short for --set attack.name=…)"),
    surrogate: Path = typer.Option(
        None, "--surrogate", help="clean classifier for attacks that need one (LF, LC, TrojanNN)"
    ),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
    data: str = typer.Option(
        None, "--data", "-d", help="data source to poison instead of data.source (e.g. a stored version such as "
        "the ingest stage's pipeline/raw)"
    ),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Load ``params.data``, apply ``params.attack`` and write the poisoned train / triggered test sets."""
    params = params_from_cli(params_path, list(overrides or []) + ([f"attack.name={attack_name}"] if attack_name else [])
                             + ([f"data.source={data}"] if data else []))
    from detoxops.data import load_splits
    from detoxops.operations import poison
    from detoxops.operations.poison import build_attack

    if out.exists() and not force:
        fail(f"{out} already exists (pass --force to replace it)")
    cfg = params.attack
    try:
        splits = load_splits(params.data.source, params.data, progress=progress)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(f"cannot load data source {params.data.source!r}: {exc}")
    train, test = splits["train"], splits["test"]
    try:
        probe = build_attack(cfg, train.images.shape[1], train.num_classes)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        fail(f"attack {cfg.name!r}: {exc}", code=2)
    model = _surrogate(surrogate, train, params) if probe.needs_fit and probe.needs_model and not probe.is_fitted else None
    try:
        outcome = poison(train, test, cfg, surrogate=model, out=out, overwrite=force,
                         source=str(params.data.source), progress=progress)
    except ValueError as exc:
        fail(str(exc))
    attack, poisoned_train, triggered_test = outcome.attack, outcome.train, outcome.test
    typer.echo(f"{attack.name}: {int(poisoned_train.poisoned.sum())}/{len(poisoned_train)} training samples "
               f"poisoned, {len(triggered_test)} triggered test images → {out}")


def _imageset_dir(path: Path, prefer: tuple[str, ...], what: str) -> Path:
    """``path`` itself when it is an ImageSet folder, else its first ``prefer`` sub-folder that is one."""
    if (path / "meta.json").is_file():
        return path
    for name in prefer:
        if (path / name / "meta.json").is_file():
            return path / name
    fail(f"{what}: {path} is not an ImageSet folder (no meta.json) and has none of "
         f"{', '.join(p + '/' for p in prefer)}")
    raise AssertionError  # unreachable


def _visibility_inputs(runs: Path | None, attacks: str | None, clean: Path | None, poisoned: Path | None,
                       victim: Path | None, name: str | None) -> list[tuple[str, Path, Path, Path]]:
    """(attack, clean ImageSet, triggered ImageSet, victim) per attack, from either input mode."""
    single = [o for o, v in (("--clean", clean), ("--poisoned", poisoned), ("--victim", victim)) if v is not None]
    if runs is not None:
        if single:
            fail(f"--runs cannot be combined with {', '.join(single)}", code=2)
        if not attacks:
            fail("--runs needs --attacks a,b,c (the attack folders under --runs to measure)", code=2)
        if not runs.is_dir():
            fail(f"--runs folder not found: {runs}")
        names = [a.strip() for a in attacks.split(",") if a.strip()]
        out = []
        for attack in names:
            folder = runs / attack
            if not folder.is_dir():
                fail(f"no folder for attack {attack!r} under {runs} (expected {folder}/test and {folder}/victim)")
            out.append((attack, _imageset_dir(runs, ("clean_test",), "clean test set"),
                        _imageset_dir(folder, ("test",), f"{attack} triggered test set"), folder / "victim"))
        return out
    if attacks:
        fail("--attacks goes with --runs; for one attack give --clean, --poisoned and --victim", code=2)
    if len(single) != 3:
        missing = sorted({"--clean", "--poisoned", "--victim"} - set(single))
        fail(f"give either --runs DIR --attacks a,b or all of --clean, --poisoned, --victim (missing: "
             f"{', '.join(missing)})", code=2)
    for option, path in (("--clean", clean), ("--poisoned", poisoned), ("--victim", victim)):
        if not path.exists():
            fail(f"{option} not found: {path}")
    return [(name or "", _imageset_dir(clean, ("clean_test", "test"), "--clean"),
             _imageset_dir(poisoned, ("test",), "--poisoned"), victim)]


@attack_app.command("visibility")
def visibility_cmd(
    runs: Path = typer.Option(None, "--runs", help="folder laid out as benchmarks/attack_table.py leaves it: "
                              "clean_test/, <attack>/test, <attack>/victim"),
    attacks: str = typer.Option(None, "--attacks", help="comma-separated attack folders under --runs"),
    clean: Path = typer.Option(None, "--clean", help="clean test ImageSet (or a data version with clean_test/)"),
    poisoned: Path = typer.Option(None, "--poisoned", help="triggered non-target test ImageSet (or a folder "
                                  "with test/, e.g. the output of `detoxops attack run`)"),
    victim: Path = typer.Option(None, "--victim", help="the attack's victim classifier folder (safetensors)"),
    name: str = typer.Option(None, "--name", help="attack name for --poisoned (default: the set's meta)"),
    target: int = typer.Option(None, "--target", help="target label (default: the triggered set's meta)"),
    out: Path = typer.Option(..., "--out", "-o", help="per-sample CSV: attack, index, visibility, robustness"),
    summary_json: Path = typer.Option(None, "--summary-json", help="also write the per-attack summary as JSON"),
    max_images: int = typer.Option(None, "--max-images", min=1,
                                   help="at most N triggered images per attack (seeded random subset)"),
    eta_step: float = typer.Option(0.01, "--eta-step", min=1e-4, max=1.0, help="spacing of the η grid on [0, 1]"),
    space: str = typer.Option("diffusion", "--space", help="noise space: diffusion ([-1, 1]) or unit ([0, 1])"),
    seed: int = typer.Option(0, "--seed", help="subset and noise seed"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    threads: int = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, …"),
    force: bool = typer.Option(False, "--force", help="replace --out / --summary-json if they exist"),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Trigger visibility v and sample robustness η_r per triggered test image (SampDetox figure 2).

    v = (1 − SSIM(clean, triggered)) / 2; η_r = the smallest η on the grid at which
    (1 − η)·triggered + η·noise is no longer classified as the target by the attack's victim (0: the victim
    already misses the target; inf: no η flips it). Prints a per-attack summary; η_r statistics are over the hits
    (η_r > 0)."""
    import csv
    import time

    import numpy as np
    import torch

    from detoxops.attacks.visibility import attack_summary, paired_rows
    from detoxops.data import ImageSet
    from detoxops.models import load_classifier, predict

    if space not in ("diffusion", "unit"):
        fail(f"--space must be 'diffusion' or 'unit', got {space!r}", code=2)
    for path in (out, summary_json):
        if path is not None and path.exists() and not force:
            fail(f"{path} already exists (pass --force to replace it)")
    inputs = _visibility_inputs(runs, attacks, clean, poisoned, victim, name)
    if threads is not None:
        torch.set_num_threads(threads)
    etas = np.round(np.arange(0.0, 1.0 + eta_step / 2, eta_step), 10).clip(0, 1)
    all_rows: list[dict] = []
    summary: dict[str, dict] = {}
    clean_cache: dict[Path, ImageSet] = {}
    for attack, clean_dir, poisoned_dir, victim_dir in inputs:
        try:
            if clean_dir not in clean_cache:
                clean_cache[clean_dir] = ImageSet.load(clean_dir)
            clean_set = clean_cache[clean_dir]
            triggered = ImageSet.load(poisoned_dir)
        except (FileNotFoundError, ValueError) as exc:
            fail(f"{attack or poisoned_dir}: cannot load: {exc}")
        meta = triggered.meta.get("attack", {}) if isinstance(triggered.meta.get("attack"), dict) else {}
        attack = attack or str(meta.get("name") or poisoned_dir.parent.name)
        attack_target = target if target is not None else meta.get("target")
        if attack_target is None:
            fail(f"{attack}: {poisoned_dir} records no attack target in its meta; pass --target")
        try:
            model = load_classifier(victim_dir, device=device)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
            fail(f"{attack}: cannot load the victim classifier {victim_dir}: {exc}")

        def predict_fn(x01, model=model):
            return predict(model, x01, batch_size=batch_size)

        start = time.perf_counter()
        if progress:
            typer.echo(f"{attack}: {min(len(triggered), max_images or len(triggered))} triggered images…", err=True)
        try:
            rows = paired_rows(attack, clean_set, triggered, predict_fn, int(attack_target), max_images=max_images,
                               seed=seed, etas=etas, space=space, batch_size=batch_size, progress=progress)
        except ValueError as exc:
            fail(str(exc))
        summary[attack] = attack_summary(rows) | {"target": int(attack_target),
                                                  "seconds": round(time.perf_counter() - start, 2)}
        all_rows += rows

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["attack", "index", "visibility", "robustness"])
        writer.writeheader()
        writer.writerows({"attack": r["attack"], "index": r["index"], "visibility": r["v"],
                          "robustness": r["eta_r"]} for r in all_rows)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        settings = {"eta_step": eta_step, "space": space, "seed": seed, "max_images": max_images}
        summary_json.write_text(json.dumps({"settings": settings, "attacks": summary}, indent=2) + "\n")

    def fmt(x: float, digits: int) -> str:
        return "–" if x != x else f"{x:.{digits}f}"

    typer.echo("| attack | n | hits | v mean / median | η_r mean / median (finite hits) | inf | seconds |")
    typer.echo("|---|---|---|---|---|---|---|")
    for attack, s in summary.items():
        typer.echo(f"| {attack} | {s['n']} | {s['hits']} | {fmt(s['v_mean'], 4)} / {fmt(s['v_median'], 4)} | "
                   f"{fmt(s['eta_r_mean'], 3)} / {fmt(s['eta_r_median'], 3)} | {s['n_inf']} | {s['seconds']} |")
    typer.echo(f"{len(all_rows)} rows → {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")
