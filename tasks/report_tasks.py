"""The results table (CA / PA / ASR per defense, TPR / FPR of sanitisation) as text and CSV.

Rows hold fractions, as every task returns them; :func:`format_table` (printed) and :func:`write_table` (the CSV
logged as ``results/results.csv``) show the rates in percent (``detoxops.metrics.percent_rates``): the one place
the flows' tables turn fractions into percent."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path
from typing import Any

from prefect import task

__all__ = ["results_table", "format_table", "write_table"]

COLUMNS = ["attack", "defense", "ca", "pa", "asr", "tpr", "fpr", "images_per_s", "seconds"]


@task(name="report")
def results_table(defense_rows: list[dict[str, Any]], sanitize_row: dict[str, Any] | None, attack: str) -> list[dict[str, Any]]:
    """The table's rows (rates as fractions): one per inference-time defense, plus DataElixir's (retrained model's
    CA / ASR, detection TPR / FPR) when sanitisation ran."""
    rows = [{"attack": attack, **{k: r.get(k) for k in COLUMNS if k != "attack"}} for r in defense_rows]
    if sanitize_row is not None:
        rows.append({"attack": attack, **{k: sanitize_row.get(k) for k in COLUMNS if k != "attack"}})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text, rates in percent."""
    from detoxops.metrics import percent_rates

    rows = [percent_rates(r) for r in rows]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}"
        return str(v)

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the results CSV, rates in percent, atomically (temp file + rename): a reader never sees half a table."""
    from detoxops.metrics import percent_rates

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows([percent_rates(r) for r in rows])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
