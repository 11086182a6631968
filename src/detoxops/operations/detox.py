"""Detox-evaluate: CA / PA / ASR of a victim behind each defense on the ``val`` (selection) or held-out ``test``
part of the test split (:func:`detoxops.defenses.evaluation.split_eval_sets`).

The one implementation behind ``detoxops detox score`` (the ``detox_eval`` stage of ``dvc.yaml``) and every sweep
point (:func:`detoxops.operations.sweep.score_setting`: this function with one ``sampdetox`` setting, in
``detoxops detox sweep``, the ``sweep`` / ``sweep_point`` stages and the sweep's Prefect task
``tasks.sweep_tasks.evaluate_point``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detoxops.config import Params
from detoxops.data import ImageSet
from detoxops.metrics import percent_rates

__all__ = ["DetoxOutcome", "evaluate_split", "ROW_COLUMNS"]

ROW_COLUMNS = ["defense", "ca", "pa", "asr", "ca_drop", "images_per_s", "n_clean", "n_poisoned"]


@dataclass(frozen=True)
class DetoxOutcome:
    """One row per defense (``detoxops.defenses.evaluation.evaluate_defense``'s: rates as fractions) with ``ca_drop``
    against the ``none`` row; ``defenses_csv`` / ``metrics_json`` where they were written."""

    rows: list[dict[str, Any]]
    split: str
    attack: str
    defenses_csv: Path | None = None
    metrics_json: Path | None = None

    def table(self) -> list[dict[str, Any]]:
        """The rows as the stored table shows them: CA / PA / ASR and the CA drop in percent (points)."""
        rows = [percent_rates({k: v for k, v in r.items() if k != "ca_drop"}) for r in self.rows]
        base = next((r["ca"] for r in rows if r["defense"] == "none"), None)
        return [{**r, "ca_drop": None if base is None else base - r["ca"]} for r in rows]

    def metrics(self) -> dict[str, Any]:
        """The DVC metrics file (percent, as :meth:`table`): split, attack and CA / PA / ASR / CA drop per defense."""
        return {"split": self.split, "attack": self.attack,
                **{r["defense"]: {k: r[k] for k in ("ca", "pa", "asr", "ca_drop") if r.get(k) is not None}
                   for r in self.table()}}


def evaluate_split(clean: ImageSet, triggered: ImageSet, target: int, victim, params: Params, split: str,
                   defenses: list[str], *, attack_name: str, attack=None, purifier: str | Path | None = None,
                   max_images: int | None = None, device: str | None = None, out: str | Path | None = None,
                   progress: bool = False) -> DetoxOutcome:
    """Score ``victim`` behind every defense of ``defenses`` (catalog names; ``params.sampdetox`` /
    ``params.baselines`` configure them) on ``split`` of the test set: ``clean`` (the clean test split) and
    ``triggered`` (its triggered non-target version), split by ``data.val_fraction`` / ``data.seed``, at most
    ``max_images`` of each (seeded). The purifier follows :func:`~detoxops.operations.choose_purifier`. With ``out``
    :meth:`DetoxOutcome.table` goes to ``<out>/defenses.csv`` and :meth:`DetoxOutcome.metrics` to
    ``<out>/metrics.json`` (percent, the pipeline's stored tables)."""
    from detoxops.defenses.catalog import build_defense, needs_purifier
    from detoxops.defenses.evaluation import eval_inputs, evaluate_defenses
    from detoxops.devices import resolve_device
    from detoxops.operations.purifier import load_chosen_purifier

    data = eval_inputs(clean, triggered, target, split, params.data.val_fraction, params.data.seed,
                       max_images=max_images, attack=attack)
    dev = resolve_device(device or "auto")
    pur = (load_chosen_purifier(purifier, params.diffusion, int(clean.image_shape[0]), device=dev)
           if needs_purifier(defenses) else None)
    victim = victim.to(dev).eval()
    built = {name: build_defense(name, pur, params.sampdetox, classifier=victim, baselines=params.baselines)
             for name in defenses}
    rows = [{k: (float(v) if isinstance(v, np.floating | float) else v) for k, v in row.items()}
            for row in evaluate_defenses(victim, built, data, params.sampdetox.batch_size, progress)]
    base = next((r["ca"] for r in rows if r["defense"] == "none"), None)
    for r in rows:
        r["ca_drop"] = None if base is None else base - r["ca"]
    outcome = DetoxOutcome(rows=rows, split=split, attack=attack_name)
    if out is None:
        return outcome
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "defenses.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                          for r in outcome.table()])
    (out / "metrics.json").write_text(json.dumps(outcome.metrics(), indent=2) + "\n")
    return DetoxOutcome(rows=rows, split=split, attack=attack_name, defenses_csv=out / "defenses.csv",
                        metrics_json=out / "metrics.json")
