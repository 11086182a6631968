"""The ``detoxops`` command line: thin — it parses arguments and calls the library.

Each command group lives in its own module under ``detoxops.commands`` and exposes ``register(app)``.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="detoxops",
    help="Defend image classifiers against backdoor attacks with diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

@app.command()
def version() -> None:
    """Print the detoxops version."""
    from detoxops import __version__

    typer.echo(__version__)


# Order here is the order in --help.
_COMMAND_MODULES = ("data", "attack", "victim", "evaluate", "diffusion", "detox", "sanitize", "report")

for _name in _COMMAND_MODULES:
    _module = importlib.import_module(f"detoxops.commands.{_name}")
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
