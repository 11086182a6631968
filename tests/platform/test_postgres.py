"""PostgreSQL as the MLflow backend store and the Prefect server database, on a throwaway cluster.

Needs PostgreSQL's server binaries (``initdb``, ``pg_ctl``: Debian's ``postgresql`` package, installed by
``.ci/system-deps.sh`` where possible); skips with the reason otherwise. The cluster lives in a temporary folder,
listens on 127.0.0.1 on a free port with ``trust`` auth, and is stopped afterwards. As root, the server runs as
the ``postgres`` system user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.platform, pytest.mark.timeout(240)]


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if Path(d, "initdb").is_file() and Path(d, "pg_ctl").is_file():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb / pg_ctl) not found: install Debian's `postgresql` "
                    "package (see .ci/system-deps.sh)")
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if runuser is None or pw is None:
            pytest.skip("running as root and no `postgres` user / runuser to start PostgreSQL as")
        prefix = [runuser, "-u", "postgres", "--"]
    # not under pytest's tmp (mode 700 for root): the postgres user must be able to reach the folder
    base = Path(tempfile.mkdtemp(prefix="detoxops-pg-"))
    os.chmod(base, 0o755)
    if prefix:
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data, port = base / "data", _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    init = run(str(bindir / "initdb"), "-D", str(data), "-U", "detoxops", "-A", "trust", "-E", "UTF8",
               "--no-sync")
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    opts = f"-h 127.0.0.1 -p {port} -k {base} -F"
    start = run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "server.log"), "-w",
                "-t", "60", "start")
    if start.returncode != 0:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log}")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="detoxops", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
            cur.execute("CREATE DATABASE prefect")
        conn.close()
        yield f"detoxops@127.0.0.1:{port}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_mlflow_tracking_on_postgres(postgres_url, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"postgresql://{postgres_url}/mlflow"
    client = MlflowClient(tracking_uri=uri)  # creates + migrates the schema on first use
    exp_id = client.create_experiment("detoxops/pg-check", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp_id, run_name="pg-run", tags={"detoxops.kind": "check"})
    client.log_param(run.info.run_id, "sampdetox.t2", "80")
    for step, asr in enumerate([0.9, 0.4, 0.1]):
        client.log_metric(run.info.run_id, "asr", asr, step=step)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)

    # read back through a fresh client / the fluent API
    mlflow.set_tracking_uri(uri)
    try:
        got = mlflow.get_run(run.info.run_id)
        assert got.data.params == {"sampdetox.t2": "80"}
        assert got.data.metrics["asr"] == pytest.approx(0.1)
        assert [m.value for m in MlflowClient(uri).get_metric_history(run.info.run_id, "asr")] == [0.9, 0.4, 0.1]
        assert got.data.tags["detoxops.kind"] == "check" and got.info.status == "FINISHED"
        found = mlflow.search_runs([exp_id], "params.`sampdetox.t2` = '80'", output_format="list")
        assert [r.info.run_id for r in found] == [run.info.run_id]
        assert [a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)] == ["note.txt"]
    finally:
        mlflow.set_tracking_uri(None)


def test_prefect_database_migrates_on_postgres(postgres_url):
    """The Prefect server's schema on PostgreSQL (async driver asyncpg), as a real `prefect server start`
    would create it with PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://…"""
    pytest.importorskip("asyncpg")
    env = dict(os.environ, PREFECT_SERVER_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://{postgres_url}/prefect",
               PREFECT_HOME=tempfile.mkdtemp(prefix="detoxops-prefect-home-"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run([str(prefect), "server", "database", "upgrade", "-y"], env=env, capture_output=True,
                          text=True, timeout=180)
    shutil.rmtree(env["PREFECT_HOME"], ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    import psycopg2

    host, port = postgres_url.split("@")[1].split(":")
    with psycopg2.connect(host=host, port=int(port), user="detoxops", dbname="prefect") as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        tables = {r[0] for r in cur.fetchall()}
    assert {"flow", "flow_run", "task_run", "deployment"} <= tables
