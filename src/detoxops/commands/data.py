"""`detoxops data` commands: ingest a source into a content-addressed dataset version, and describe one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from detoxops.commands._common import fail, params_from_cli
from detoxops.commands._options import PARAMS_OPTION, PROGRESS_OPTION, SET_OPTION

data_app = typer.Typer(help="Ingest, validate and inspect datasets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("ingest")
def ingest_command(
    source: str = typer.Argument(
        None,
        help="digits | cifar10 | gtsrb | a class-folder tree, .tar.gz/.zip archive, .npz or stored version "
        "(default: data.source from params)",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="root folder of dataset versions (default: data.root)"
    ),
    name: str = typer.Option(None, "--name", help="dataset name (default: derived from the source)"),
    to: Path = typer.Option(
        None, "--to", help="store the version in exactly this folder (a pipeline output, e.g. pipeline/raw) "
        "instead of <out>/<name>/<hash12>/"
    ),
    force: bool = typer.Option(False, "--force", help="with --to: replace a different version already there"),
    split: str = typer.Option(
        None, "--split", help="store a single class-folder tree whole as this one split (train, test or val) "
        "instead of splitting it; a class may then have no images (triggered test images)"
    ),
    no_split: bool = typer.Option(
        False, "--no-split", help="impose no split: a single class-folder tree is stored whole as 'test', a "
        "source with train/ and test/ folders as it is"
    ),
    progress: bool = PROGRESS_OPTION,
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Validate SOURCE and store it as <out>/<name>/<hash12>/ (an existing identical version is reused).

    With --to the version goes to that exact folder, which is what dvc.yaml's ``ingest`` stage uses. A single
    class-folder tree is split into train / test (data.test_fraction) unless --split NAME or --no-split.
    """
    from detoxops.data import ingest, version_info
    from detoxops.data.sources import resolve_image_size

    cfg = params_from_cli(params, overrides).data
    src = source or cfg.source
    if split is not None and no_split:
        fail("--split and --no-split exclude each other (--no-split stores a single tree as 'test')", code=2)
    if split is not None and split not in ("train", "test", "val"):
        fail(f"--split must be train, test or val, got {split!r}", code=2)
    whole = "as-is" if no_split else split
    try:
        cfg, size_note = resolve_image_size(src, cfg)
        path = ingest(src, out if out is not None else Path(cfg.root), cfg, name=name, progress=progress,
                      at=to, overwrite=force, split=whole)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        fail(str(exc))
        return
    info = version_info(path)
    if size_note:
        typer.echo(size_note, err=True)  # stdout stays the version path and its summary
    typer.echo(str(path))
    counts = ", ".join(f"{s} {e['count']}" for s, e in info["splits"].items())
    shape = "x".join(str(d) for d in info["image_shape"])
    typer.echo(
        f"{info['name']}: {counts} images of {shape}, {len(info['class_names'])} classes, "
        f"hash {info['hash'][:12]}"
    )


@data_app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="a dataset version folder (or a dataset folder holding versions)"),
    params: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Class counts per split, image size, content hash and provenance of a stored dataset version."""
    from detoxops.data import is_version_dir, load_version, version_info

    params_from_cli(params, overrides)  # validates --set like every command, even though info needs none
    if not path.exists():
        fail(f"dataset version not found: {path}")
    if not is_version_dir(path):
        versions = sorted(p for p in path.iterdir() if is_version_dir(p)) if path.is_dir() else []
        if not versions:
            fail(f"not a dataset version folder (no version.json): {path}")
        typer.echo(f"{path}: {len(versions)} version(s)")
        for v in versions:
            vi = version_info(v)
            counts = ", ".join(f"{s} {e['count']}" for s, e in vi["splits"].items())
            typer.echo(f"  {v.name}  {vi['created']}  {counts}  source {vi['source']}")
        return
    try:
        info = version_info(path)
        splits = load_version(path)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return
    names = info["class_names"]
    shape = "x".join(str(d) for d in info["image_shape"])
    typer.echo(f"dataset   {info['name']}")
    typer.echo(f"path      {path}")
    typer.echo(f"hash      {info['hash']}")
    typer.echo(f"source    {info['source']}")
    typer.echo(f"created   {info['created']}")
    typer.echo(f"images    {shape} uint8 (H x W x C)")
    typer.echo(f"classes   {len(names)}")
    split_names = list(splits)
    width = max(len("class"), *(len(n) for n in names))
    typer.echo("")
    typer.echo(f"{'class':<{width}}  " + "  ".join(f"{s:>8}" for s in split_names))
    counts = {s: ds.class_counts() for s, ds in splits.items()}
    for i, cname in enumerate(names):
        typer.echo(f"{cname:<{width}}  " + "  ".join(f"{int(counts[s][i]):>8}" for s in split_names))
    typer.echo(f"{'total':<{width}}  " + "  ".join(f"{len(splits[s]):>8}" for s in split_names))
    typer.echo("")
    typer.echo("provenance")
    for s, ds in splits.items():
        relabelled = int(np.count_nonzero(ds.labels != ds.original_labels))
        transforms = len(ds.meta.get("transforms", []))
        typer.echo(
            f"  {s:<6} poisoned {int(ds.poisoned.sum())}, relabelled {relabelled}, "
            f"source_index {int(ds.source_index.min())}..{int(ds.source_index.max())}, "
            f"{transforms} transform(s), hash {info['splits'][s]['content_hash'][:12]}"
        )
