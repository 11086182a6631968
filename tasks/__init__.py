"""Prefect tasks wrapping the detoxops core library: MLflow tracking, DVC versioning, cached heavy steps.

Tasks pass paths, names and small dicts between each other (never tensors): that keeps Prefect's cache keys
cheap to compute and its persisted results JSON, not pickle.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_OVERLAY = PROJECT_ROOT / "params.demo.yaml"
"""The demo's budgets, an overlay on ``params.yaml`` (``detoxops.config.load_params(overlay=...)``): ``flows.demo``
applies all of it; ``flows.sanitize`` / ``flows.detox`` / ``flows.ingestion_check`` apply it without the sections
in :data:`DEMO_OVERLAY_SKIP` (the compute budgets only: a dataset they check or sanitise is never cut to the
demo's subset of digits)."""
DEMO_OVERLAY_SKIP = ("data",)


def project_path(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` as given when absolute, else under ``root`` (default: the project root): params paths are the
    project's, whatever the working directory of a flow or worker."""
    p = Path(path)
    return p if p.is_absolute() else Path(root or PROJECT_ROOT) / p


def configure_environment(root: str | Path | None = None) -> Path:
    """Sensible defaults for running flows without a Prefect server (ephemeral mode), unless the user set them.

    ``PREFECT_HOME`` under the project (results cache persists across runs there), a 90 s server start-up
    timeout (a fresh database migrates in ~20 s on 2 cores), analytics off (offline machines log errors).
    """
    root = Path(root or PROJECT_ROOT).resolve()
    defaults = {
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return root
