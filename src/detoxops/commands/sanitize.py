"""`detoxops sanitize` — DataElixir on a (possibly poisoned) training set."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detoxops.commands._common import fail, params_from_cli
from detoxops.commands._options import PARAMS_OPTION, PROGRESS_OPTION, PURIFIER_OPTION, SET_OPTION


def sanitize(
    data: Path = typer.Option(..., "--data", help="a saved ImageSet folder (e.g. the train/ of `attack run`)"),
    victim: Path = typer.Option(..., "--victim", help="classifier trained on that data (`victim train`)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the purified ImageSet + decisions.csv"),
    purifier: Path = PURIFIER_OPTION,
    workdir: Path = typer.Option(None, "--workdir", help="resumable shard folder (default: <out>.work)"),
    version_root: Path = typer.Option(None, "--version-root",
                                      help="also store the purified set as dataset version <root>/<name>/<hash12>/"),
    version_name: str = typer.Option("purified", "--version-name", help="dataset name for --version-root"),
    summary_path: Path = typer.Option(None, "--summary", help="also write the printed summary (target labels, "
                                      "flagged, TPR / FPR) to this JSON file, e.g. a DVC metrics file"),
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Find the poisoned samples and the target label, purify their images, restore their labels."""
    params = params_from_cli(params_path, overrides)
    if out.exists() and not force:  # before hours of work, not after
        fail(f"{out} already exists (pass --force to replace it)")
    from detoxops.data import ImageSet
    from detoxops.models import load_classifier
    from detoxops.operations import sanitize as sanitize_op

    try:
        train = ImageSet.load(data)
        model = load_classifier(victim)
        outcome = sanitize_op(train, model, params, out=out, version_root=version_root, version_name=version_name,
                              source=f"dataelixir:{data}", purifier=purifier, workdir=workdir, overwrite=force,
                              progress=progress)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        fail(str(exc))
    summary = outcome.summary()
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = summary_path.with_name(summary_path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(summary_path)
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    app.command("sanitize")(sanitize)
