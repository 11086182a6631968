"""Helpers shared by the CLI command modules: params loading with overrides and error reporting."""

from __future__ import annotations

from pathlib import Path

import typer

from detoxops.config import ConfigError, Params, load_params

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read")
SET_OPTION = typer.Option(None, "--set", "-s", help="override a param, e.g. --set sampdetox.t1=20 (repeatable)")


def params_from_cli(path: Path, overrides: list[str] | None) -> Params:
    """Load params (defaults when the file is absent and no explicit path was given); exit 2 on a bad key."""
    try:
        if not path.exists() and path == Path("params.yaml"):
            return load_params(None, overrides)
        return load_params(path, overrides)
    except ConfigError as exc:
        fail(str(exc), code=2)
        raise  # unreachable


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
