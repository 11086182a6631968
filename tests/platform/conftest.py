"""Platform tests: one shared temporary Prefect server per test session, and every store (Prefect results,
MLflow, DVC remote, datasets) in a temporary folder so nothing leaks between runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tasks/ and flows/ are top-level packages of the checkout (not installed): pytest's importlib mode does
# not put the project root on sys.path, so do it here.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def platform_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("platform")
    env = {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect-results"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
