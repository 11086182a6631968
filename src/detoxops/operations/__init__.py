"""One function per user operation, taking typed config and returning a typed result with its artifact paths.

The CLI commands (``detoxops.commands``), the ``dvc.yaml`` stages (which call the CLI), the Prefect tasks
(``tasks/``) and the benchmarks all call these, so an operation means the same thing whichever way it is run.
Nothing here knows about Prefect, MLflow or DVC; tracking is the task layer's job.

| operation | function | result |
|---|---|---|
| sanitize (DataElixir on a training set) | :func:`detoxops.operations.sanitize.sanitize` | :class:`SanitizeOutcome` |
"""

from detoxops.operations.purifier import choose_purifier, load_chosen_purifier
from detoxops.operations.sanitize import SanitizeOutcome, relabel_config, sanitize

__all__ = ["SanitizeOutcome", "choose_purifier", "load_chosen_purifier", "relabel_config", "sanitize"]
