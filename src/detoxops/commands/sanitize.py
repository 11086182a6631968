"""`detoxops sanitize` — DataElixir on a (possibly poisoned) training set."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detoxops.commands._common import PARAMS_OPTION, SET_OPTION, fail, params_from_cli


def sanitize(
    data: Path = typer.Option(..., "--data", help="a saved ImageSet folder (e.g. the train/ of `attack run`)"),
    victim: Path = typer.Option(..., "--victim", help="classifier trained on that data (`victim train`)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the purified ImageSet + decisions.csv"),
    purifier: Path = typer.Option(None, "--purifier", help="diffusers UNet folder (default: params / shipped)"),
    workdir: Path = typer.Option(None, "--workdir", help="resumable shard folder (default: <out>.work)"),
    version_root: Path = typer.Option(None, "--version-root",
                                      help="also store the purified set as dataset version <root>/<name>/<hash12>/"),
    version_name: str = typer.Option("purified", "--version-name", help="dataset name for --version-root"),
    summary_path: Path = typer.Option(None, "--summary", help="also write the printed summary (target labels, "
                                      "flagged, TPR / FPR) to this JSON file, e.g. a DVC metrics file"),
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Find the poisoned samples and the target label, purify their images, restore their labels."""
    params = params_from_cli(params_path, overrides)
    if out.exists() and not force:  # before hours of work, not after
        fail(f"{out} already exists (pass --force to replace it)")
    from detoxops.data import ImageSet
    from detoxops.defenses.dataelixir import DataElixir
    from detoxops.diffusion import default_purifier, load_purifier
    from detoxops.metrics import detection_rates
    from detoxops.models import load_classifier

    try:
        train = ImageSet.load(data)
        model = load_classifier(victim)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    source = purifier or params.diffusion.purifier
    pur = load_purifier(source) if source else default_purifier(train.images.shape[1])
    result = DataElixir(pur, params.dataelixir, params.victim.model_copy(
        update={"epochs": params.dataelixir.relabel_epochs})).sanitize(
        train, model, workdir or out.with_name(out.name + ".work"), progress=progress)
    from detoxops.data.imageset import atomic_dir

    with atomic_dir(out, overwrite=force) as tmp:  # the purified set and its decisions appear together or not at all
        result.dataset.write_into(tmp)
        (tmp / "decisions.csv").write_text(result.decisions_csv())
        (tmp / "anomaly_index.json").write_text(json.dumps(result.anomaly_index, indent=1))
    summary = {"target_labels": result.target_labels, "flagged": int(result.flagged.sum())}
    if version_root is not None:
        from detoxops.data import save_version

        try:
            summary["version"] = str(save_version({"train": result.dataset}, version_root, version_name,
                                                  source=f"dataelixir:{data}",
                                                  extra={"sanitize": result.dataset.meta["sanitize"]}))
        except (ValueError, FileExistsError) as exc:
            fail(str(exc))
    if train.poisoned.any():
        tpr, fpr = detection_rates(train.labels, result.dataset.labels, train.poisoned)
        summary |= {"tpr": tpr, "fpr": fpr}
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = summary_path.with_name(summary_path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(summary_path)
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    app.command("sanitize")(sanitize)
