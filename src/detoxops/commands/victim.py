"""`detoxops victim train` — train a (possibly backdoored) classifier on a clean or poisoned dataset."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detoxops.commands._common import fail, params_from_cli
from detoxops.commands._options import PARAMS_OPTION, PROGRESS_OPTION, SET_OPTION

victim_app = typer.Typer(help="Victim classifiers: train on a clean or poisoned dataset.", no_args_is_help=True)


@victim_app.command("train")
def train(
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="folder for the trained classifier (safetensors + JSON)"),
    poisoned: Path = typer.Option(None, "--poisoned", help="output folder of `detoxops attack run` to train on"),
    checkpoint_dir: Path = typer.Option(None, "--checkpoint-dir", help="resumable per-epoch checkpoints"),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Train ``params.victim`` on ``--poisoned`` (or on the clean ``params.data``) and report CA / PA / ASR."""
    params = params_from_cli(params_path, overrides)
    import shlex
    import sys

    from detoxops.attacks import registry
    from detoxops.data import ImageSet, load_splits
    from detoxops.operations import train_victim

    try:
        splits = load_splits(params.data.source, params.data, progress=progress)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(f"cannot load data source {params.data.source!r}: {exc}")
    train_set, clean_test = splits["train"], splits["test"]
    attack, triggered = None, None
    if poisoned is not None:
        if not (poisoned / "attack.json").is_file():
            fail(f"{poisoned}: not an attack output folder (no attack.json); run `detoxops attack run` first")
        train_set = ImageSet.load(poisoned / "train")
        triggered = ImageSet.load(poisoned / "test")
        attack = registry.from_record(poisoned)
    record = {"command": shlex.join(["detoxops", *sys.argv[1:]]), "seed": params.victim.seed,
              "data_source": str(params.data.source),
              "attack_record": json.loads((poisoned / "attack.json").read_text()) if poisoned is not None else None}
    metrics = train_victim(train_set, params.victim, out, attack=attack, clean_test=clean_test, triggered=triggered,
                           checkpoint_dir=checkpoint_dir, record=record, progress=progress).metrics
    typer.echo(" ".join(f"{k.upper()}={v:.4f}" for k, v in metrics.items()) + f" → {out}")


@victim_app.command("export")
def export(
    source: Path = typer.Argument(..., help="a saved classifier folder (e.g. runs/.../victim)"),
    name: str = typer.Option(..., "--name", help="name in the victim store, e.g. cifar10-fast/badnets"),
    store: Path = typer.Option(None, "--store", help="victim store folder (default $DETOXOPS_VICTIMS or victims/)"),
    half: bool = typer.Option(True, "--half/--full", help="fp16 weights (BatchNorm statistics stay fp32)"),
    attack_run: Path = typer.Option(
        None, "--attack-run", help="the `detoxops attack run` folder the victim was trained on: its attack record "
        "(and a fitted trigger's state) is stored with the victim so its triggered test set can be regenerated"),
) -> None:
    """Copy a trained classifier into the victim store under NAME, with its training record."""
    from detoxops.models import load_classifier, save_classifier
    from detoxops.models.store import victim_store

    try:
        model = load_classifier(source)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(f"{source}: cannot load the classifier: {exc}")
    dest = (store or victim_store()) / name
    meta = {**model.detoxops_meta, "exported_from": str(source), "fp16_weights": half}
    if attack_run is not None:
        if not (attack_run / "attack.json").is_file():
            fail(f"{attack_run}: not an attack output folder (no attack.json)")
        meta["attack_record"] = json.loads((attack_run / "attack.json").read_text())
    save_classifier(model, dest, meta=meta, half=half)
    if attack_run is not None:
        from detoxops.models.store import store_attack_state

        store_attack_state(dest, attack_run)
    size = sum(f.stat().st_size for f in dest.iterdir())
    typer.echo(f"{name} → {dest} ({size / 2**20:.1f} MiB)")


@victim_app.command("list")
def list_store(
    store: Path = typer.Option(None, "--store", help="victim store folder (default $DETOXOPS_VICTIMS or victims/)"),
) -> None:
    """The classifiers in the victim store, loadable by name wherever a classifier folder is expected."""
    from detoxops.models.store import list_victims, victim_store

    root = store or victim_store()
    rows = list_victims(root)
    if not rows:
        typer.echo(f"no classifiers under {root}")
        return
    for r in rows:
        ca = f"CA {100 * r['ca']:.1f}" if r["ca"] is not None else ""
        asr = f"ASR {100 * r['asr']:.1f}" if r["asr"] is not None else ""
        typer.echo(f"{r['name']:40s} {r['arch'] or '?':16s} {ca:10s} {asr}")


def register(app: typer.Typer) -> None:
    app.add_typer(victim_app, name="victim")
