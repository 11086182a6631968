"""Platform tests: one shared temporary Prefect server per test session, and every store (Prefect results,
MLflow, DVC remote, datasets) in a temporary folder so nothing leaks between runs."""

from __future__ import annotations

import os

import pytest


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
