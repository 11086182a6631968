"""Typer option declarations shared by the CLI commands: one flag, one help text, one default everywhere."""

from __future__ import annotations

from pathlib import Path

import typer

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="params.yaml to read")
SET_OPTION = typer.Option(None, "--set", "-s", help="override a param, e.g. --set sampdetox.t1=20 (repeatable)")
PROGRESS_OPTION = typer.Option(True, "--progress/--no-progress", help="show progress bars")
PURIFIER_OPTION = typer.Option(
    None, "--purifier", help="purifier folder (diffusers UNet) or shipped name for the diffusion defenses / DataElixir "
    "(default: diffusion.purifier, else the one shipped for the image size: detoxops.operations.choose_purifier; "
    "DataElixir: dataelixir.purifier, diffusion.purifier, then its profile's: detoxops.operations.dataelixir_purifier)"
)
