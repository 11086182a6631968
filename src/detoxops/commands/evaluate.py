"""`detoxops evaluate` — CA / PA / ASR of a saved classifier (no defense)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detoxops.commands._common import fail, params_from_cli
from detoxops.commands._options import PARAMS_OPTION, SET_OPTION


def evaluate(
    victim: Path = typer.Option(..., "--victim", help="classifier folder from `detoxops victim train`, or a name "
                                "in the victim store (`detoxops victim list`)"),
    poisoned: Path = typer.Option(None, "--poisoned", help="output folder of `detoxops attack run`"),
    params_path: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
) -> None:
    """Clean accuracy on ``params.data``'s test split; PA / ASR on the attack's triggered test set if given, with
    the test-time augmentation of ``victim.tta``."""
    params = params_from_cli(params_path, overrides)
    from detoxops.data import ImageSet, load_splits
    from detoxops.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
    from detoxops.models import load_classifier, predict

    try:
        model = load_classifier(victim)
    except FileNotFoundError as exc:
        fail(str(exc))
    test = load_splits(params.data.source, params.data, progress=False)["test"]
    tta = params.victim.tta
    metrics = {"ca": clean_accuracy(predict(model, test.images, tta=tta), test.labels)}
    if poisoned is not None:
        record = json.loads((poisoned / "attack.json").read_text())
        triggered = ImageSet.load(poisoned / "test")
        pred = predict(model, triggered.images, tta=tta)
        metrics |= {"pa": poisoned_accuracy(pred, triggered.original_labels),
                    "asr": attack_success_rate(pred, record["target"])}
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        typer.echo(" ".join(f"{k.upper()}={v:.4f}" for k, v in metrics.items()))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
