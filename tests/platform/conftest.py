"""Platform tests: one shared temporary Prefect server per test session, and every store (Prefect results,
MLflow, DVC remote, datasets) in a temporary folder so nothing leaks between runs."""

from __future__ import annotations

import os
import subprocess
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
    # the temporary Prefect server needs > 120 s to start on a CPU at load ~20 (measured 2026-12-05)
    startup = int(os.environ.get("DETOXOPS_TEST_PREFECT_STARTUP_S", "120"))
    env = {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect-results"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(startup),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=startup):
        yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_dataelixir() -> list[str]:
    """The smallest DataElixir budget that still finds BadNets' target on 400 digits (measured: target 0, mean
    anomaly index ~6 vs threshold 2, TPR ~97 %; a clean set's largest index stays below 2)."""
    return [
        "victim.epochs=8",
        "dataelixir.T=40",
        "dataelixir.rounds=2",
        "dataelixir.keep_last=5",
        "dataelixir.sampler=ddim",  # explicit: the demo overlay's sampler is DDPM
        "dataelixir.ddim_stride=8",
        "dataelixir.relabel_epochs=3",
        "dataelixir.finetune_epochs=1",
    ]


@pytest.fixture(scope="session")
def tmp_stores(platform_env):
    """``tmp_stores(root, *flows, dvc_remote=True)`` → (MlflowClient, overrides): creates the MLflow experiments
    ``detoxops/<flow>`` with their artifacts under ``root`` (not the project's mlartifacts) and gives the
    overrides that keep a flow's data, runs (and DVC remote) under ``root``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    def make(root: Path, *flows: str, dvc_remote: bool = True) -> tuple[MlflowClient, list[str]]:
        client = MlflowClient(mlflow.get_tracking_uri())
        for flow in flows:
            name = f"detoxops/{flow}"
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name, artifact_location=(root / "artifacts" / flow).as_uri())
        overrides = [f"data.root={root / 'data'}", f"tracking.runs_dir={root / 'runs'}"]
        if dvc_remote:
            overrides.append(f"tracking.dvc_remote={root / 'remote'}")
        return client, overrides

    return make


class ScratchRepo:
    """A scratch Git + DVC project for the dvc.yaml tests: ``init(proj)`` commits what is in ``proj`` and returns
    the environment the commands run in; ``run(args, cwd, env)`` asserts a command succeeds and returns its output."""

    dvc = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dvc"

    @staticmethod
    def run(args: list[str], cwd: Path, env: dict[str, str], stdout_only: bool = False, timeout: int = 600) -> str:
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout if stdout_only else proc.stdout + proc.stderr

    def init(self, proj: Path) -> dict[str, str]:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
               "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "2"}
        self.run(["git", "init", "-q", "-b", "main"], proj, env)
        self.run([str(self.dvc), "init", "-q"], proj, env)
        self.run(["git", "add", "-A"], proj, env)
        self.run(["git", "commit", "-q", "-m", "scratch project"], proj, env)
        return env


@pytest.fixture(scope="session")
def scratch_repo() -> ScratchRepo:
    return ScratchRepo()
