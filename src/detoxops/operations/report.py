"""Report: the victim's metrics, the held-out defense rows and the sanitize finding joined into one table
(``report/defenses.csv``, for ``dvc plots show``) and ``report/report.md`` — the ``report`` stage of ``dvc.yaml``
(``detoxops report``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def write_report(victim_metrics: Path, defenses_csv: Path, out: Path,
           sanitize_summary: Path | None = None) -> list[dict[str, Any]]:
    """Rows (percent, rounded for display): ``victim (full test)`` from ``victim_metrics`` (``detoxops evaluate
    --json``: fractions), then one per defense of ``defenses_csv`` (``detoxops detox score``: percent). Writes
    ``out/defenses.csv`` and ``out/report.md`` (with the finding of ``detoxops sanitize --summary`` when given)."""
    from detoxops.metrics import percent

    victim = json.loads(victim_metrics.read_text()) if victim_metrics.is_file() else {}
    with defenses_csv.open() as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    table = []
    if victim:  # the victim on the whole test split, no defense
        table.append({"defense": "victim (full test)", **{k: round(percent(float(victim[k])), 2)
                                                          for k in ("ca", "pa", "asr") if k in victim}})
    for r in rows:
        table.append({"defense": r["defense"], **{k: round(float(r[k]), 2) for k in ("ca", "pa", "asr") if r.get(k)}})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "defenses.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["defense", "ca", "pa", "asr"], extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    md = ["| defense | CA | PA | ASR |", "|---|---:|---:|---:|"]
    md += [f"| {r['defense']} | {r.get('ca', '-')} | {r.get('pa', '-')} | {r.get('asr', '-')} |" for r in table]
    if sanitize_summary is not None and sanitize_summary.is_file():
        md += ["", "DataElixir on the poisoned training set (`sanitize` stage):", "",
               *_sanitize_lines(json.loads(sanitize_summary.read_text()))]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return table


def _sanitize_lines(summary: dict[str, Any]) -> list[str]:
    from detoxops.metrics import percent

    targets = summary.get("target_labels") or []
    lines = [f"- target label(s) found: {', '.join(map(str, targets)) if targets else 'none'}",
             f"- samples flagged: {summary.get('flagged', '-')}"]
    if summary.get("tpr") is not None and summary.get("fpr") is not None:
        lines.append(f"- TPR {percent(summary['tpr']):.1f} %, FPR {percent(summary['fpr']):.1f} % "
                     "(ground-truth poison flags)")
    return lines
