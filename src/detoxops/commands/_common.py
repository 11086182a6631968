"""Helpers shared by the CLI command modules: params loading with overrides and error reporting."""

from __future__ import annotations

from pathlib import Path

import typer

from detoxops.config import ConfigError, Params, load_params


def params_from_cli(path: Path, overrides: list[str] | None) -> Params:
    """Load params (defaults when the file is absent and no explicit path was given, with a loud warning: the
    built-in defaults differ from the shipped params.yaml); exit 2 on a bad key. Says which file it read."""
    try:
        if not path.exists() and path == Path("params.yaml"):
            typer.secho(
                f"WARNING: no params.yaml in {Path.cwd()}: using detoxops's built-in defaults, which differ from "
                "the project's params.yaml (e.g. data.image_size). Run from the project folder or pass --params.",
                fg=typer.colors.YELLOW, err=True, bold=True,
            )
            return load_params(None, overrides)
        return load_params(path, overrides)
    except ConfigError as exc:
        fail(str(exc), code=2)
        raise  # unreachable


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
