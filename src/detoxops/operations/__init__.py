"""One function per user operation, taking typed config and returning a typed result with its artifact paths.

The CLI commands (``detoxops.commands``), the ``dvc.yaml`` stages (which call the CLI), the Prefect tasks
(``tasks/``) and the benchmarks all call these, so an operation means the same thing whichever way it is run.
Nothing here knows about Prefect, MLflow or DVC; tracking is the task layer's job.

| operation | function | result |
|---|---|---|
| poison (the configured attack on a dataset) | :func:`~detoxops.operations.poison.poison` | :class:`PoisonOutcome` |
| train victim | :func:`~detoxops.operations.victim.train_victim` | :class:`VictimOutcome` |
| prepare the purifier (configured, shipped or trained) | :func:`~detoxops.operations.purifier.prepare_purifier` | :class:`PurifierOutcome` |
| DataElixir's purifier setting (its own, the global one, its profile's) | :func:`~detoxops.operations.purifier.dataelixir_purifier` | a folder / shipped name or ``None`` |
| sanitize (DataElixir on a training set) | :func:`~detoxops.operations.sanitize.sanitize` | :class:`SanitizeOutcome` |
| sanitize's candidate shards (its costly stage, for parallel workers) | :func:`~detoxops.operations.sanitize.sanitize_shards` | shard ids computed |
| detox-evaluate (defenses on the val / held-out split) | :func:`~detoxops.operations.detox.evaluate_split` | :class:`DetoxOutcome` |
| sweep (SampDetox settings on val, the rule's choice, checked on test) | :func:`~detoxops.operations.sweep.sweep` | :class:`SweepOutcome` |
| report (the pipeline's table) | :func:`~detoxops.operations.report.write_report` | rows |
"""

from detoxops.operations.detox import DetoxOutcome, evaluate_split
from detoxops.operations.poison import PoisonOutcome, poison
from detoxops.operations.purifier import (
    PurifierOutcome,
    choose_purifier,
    dataelixir_diffusion,
    dataelixir_purifier,
    load_chosen_purifier,
    prepare_purifier,
)
from detoxops.operations.report import write_report
from detoxops.operations.sanitize import (
    SanitizeOutcome,
    relabel_config,
    sanitize,
    sanitize_shards,
    shard_count,
)
from detoxops.operations.sweep import SweepCase, SweepOutcome, sweep
from detoxops.operations.victim import VictimOutcome, train_victim

__all__ = ["DetoxOutcome", "PoisonOutcome", "PurifierOutcome", "SanitizeOutcome", "choose_purifier", "dataelixir_diffusion",
           "dataelixir_purifier", "evaluate_split", "load_chosen_purifier", "poison", "prepare_purifier", "relabel_config", "sanitize", "sanitize_shards",
           "shard_count", "SweepCase", "SweepOutcome", "sweep", "train_victim", "VictimOutcome", "write_report"]
