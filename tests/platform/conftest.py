"""Platform tests: one shared temporary Prefect server per test session, and every store (Prefect results,
MLflow, DVC remote, datasets) in a temporary folder so nothing leaks between runs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> Iterator[str]:
    """A fresh MLflow store for one test (sqlite in ``tmp_path``): its URI, set in the environment (for servers the
    test starts) and in this process; unset afterwards."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


class LocalServer:
    """A server process a platform test starts on 127.0.0.1 (``mlflow models serve``, ``python -m
    tasks.serve_guard``): a free port, the environment it runs in, and :meth:`running`, which starts it in its own
    process group, waits for ``/ping`` and stops the whole group afterwards (the mlflow CLI spawns uvicorn)."""

    @staticmethod
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    @staticmethod
    def env(tracking_uri: str) -> dict[str, str]:
        """This interpreter's environment on ``tracking_uri``, one thread, its scripts (``mlflow``) on PATH."""
        return dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def mlflow_serve(self, model_uri: str, port: int, env: dict[str, str]) -> list[str]:
        """The ``mlflow models serve`` command of ``model_uri`` with the local environment, one worker."""
        mlflow_bin = shutil.which("mlflow", path=env["PATH"])
        assert mlflow_bin, "mlflow CLI not found next to the interpreter"
        return [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
                "-p", str(port), "-w", "1"]

    @contextmanager
    def running(self, args: list[str], port: int, env: dict[str, str], log_path: Path, *, cwd: Path | None = None,
                seconds: float = 300) -> Iterator[str]:
        """Start ``args`` (output to ``log_path``), yield its base URL once ``/ping`` answers 200 (a loaded 2-core
        machine needs minutes to import mlflow + torch), and stop it, SIGKILL if SIGTERM is not enough."""
        with log_path.open("w") as log:
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            self._wait_ready(proc, base, log_path, seconds)
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    @staticmethod
    def _wait_ready(proc: subprocess.Popen, base: str, log_path: Path, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {seconds} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def local_server() -> LocalServer:
    return LocalServer()


@pytest.fixture
def dashboard_on(monkeypatch):
    """``dashboard_on(data_root)`` → the dashboard (``dashboards/app.py``, Streamlit's AppTest) run on that data root
    with fresh caches, checked to raise nothing; the caches are cleared again afterwards."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    def run(data_root: str | Path):
        monkeypatch.setenv("DETOXOPS_DATA_ROOT", str(data_root))
        st.cache_data.clear()
        st.cache_resource.clear()
        at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=60)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield run
    st.cache_data.clear()
    st.cache_resource.clear()


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
