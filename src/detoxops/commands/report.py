"""`detoxops report` — the pipeline's per-defense table and report (the ``report`` stage of ``dvc.yaml``)."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    victim_metrics: Path = typer.Option(..., "--victim-metrics", help="`detoxops evaluate --json` output"),
    defenses: Path = typer.Option(..., "--defenses", help="defenses.csv of `detoxops detox score`"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for defenses.csv and report.md"),
    sanitize_summary: Path = typer.Option(None, "--sanitize", help="summary JSON of `detoxops sanitize --summary`"),
) -> None:
    """Join the victim's metrics, the held-out defense rows and the sanitize finding into ``defenses.csv`` (for
    ``dvc plots show``) and ``report.md``."""
    from detoxops.commands._common import fail
    from detoxops.operations import write_report

    try:
        rows = write_report(victim_metrics, defenses, out, sanitize_summary)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))
    for row in rows:
        typer.echo(row)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
