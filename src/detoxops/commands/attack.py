"""`detoxops attack` — list the attacks, or poison a dataset with the one ``params.attack`` names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from detoxops.commands._common import PARAMS_OPTION, SET_OPTION, fail, params_from_cli

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
        from detoxops.models import build_classifier, load_classifier, train_classifier
    except ImportError as exc:
        fail(f"this attack needs a clean surrogate classifier but detoxops.models is unavailable: {exc}")
    if path is not None:
        if not path.exists():
            fail(f"surrogate classifier not found: {path}")
        loaded = load_classifier(path)
        return loaded[0] if isinstance(loaded, tuple) else loaded
    typer.echo(f"training a clean surrogate classifier ({params.victim.arch}, {params.victim.epochs} epochs)…")
    model = build_classifier(params.victim.arch, num_classes=train.num_classes, in_channels=3,
                             image_size=int(train.images.shape[1]))
    result = train_classifier(model, train, params.victim)
    import torch

    if isinstance(result, torch.nn.Module):
        return result
    return getattr(result, "model", model)


@attack_app.command("run")
def run(
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="folder to write train/, test/, attack.json into"),
    surrogate: Path = typer.Option(None, "--surrogate", help="clean classifier for attacks that need one (LF)"),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Load ``params.data``, apply ``params.attack`` and write the poisoned train / triggered test sets."""
    params = params_from_cli(params_path, overrides)
    from detoxops.attacks import registry
    from detoxops.attacks.poisoning import poison_datasets
    from detoxops.data import load_splits
    from detoxops.data.imageset import atomic_dir

    if out.exists() and not force:
        fail(f"{out} already exists (pass --force to replace it)")
    cfg = params.attack
    try:
        splits = load_splits(params.data.source, params.data, progress=progress)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(f"cannot load data source {params.data.source!r}: {exc}")
    train, test = splits["train"], splits["test"]
    try:
        attack = registry.create(cfg.name, target=cfg.target, poison_ratio=cfg.poison_ratio, seed=cfg.seed,
                                 image_size=int(train.images.shape[1]), num_classes=train.num_classes,
                                 options=cfg.options.get(cfg.name, {}))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        fail(f"attack {cfg.name!r}: {exc}", code=2)
    if attack.needs_fit and not attack.is_fitted:
        model = _surrogate(surrogate, train, params) if attack.needs_model else None
        try:
            attack.fit(train.images, train.labels, model=model, progress=progress)
        except ValueError as exc:
            fail(str(exc))
    poisoned_train, triggered_test = poison_datasets(attack, train, test)
    with atomic_dir(out, overwrite=force) as tmp:
        poisoned_train.save(tmp / "train")
        triggered_test.save(tmp / "test")
        state = attack.save_state(tmp / "state") if attack.needs_fit else []
        record = attack.describe() | {
            "data_source": str(params.data.source),
            "train": {"num_samples": len(poisoned_train), "num_poisoned": int(poisoned_train.poisoned.sum()),
                      "content_hash": poisoned_train.content_hash()},
            "test": {"num_samples": len(triggered_test), "content_hash": triggered_test.content_hash()},
            "state_files": [p.name for p in state],
            "fit_report": getattr(attack, "fit_report", {}),
        }
        (tmp / "attack.json").write_text(json.dumps(record, indent=2) + "\n")
    typer.echo(f"{attack.name}: {int(poisoned_train.poisoned.sum())}/{len(poisoned_train)} training samples "
               f"poisoned, {len(triggered_test)} triggered test images → {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")
