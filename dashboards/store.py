"""Read-only access to what the runs recorded in MLflow (see ARCHITECTURE.md, tracking conventions).

Every function takes the tracking URI as its first argument, so the ``st.cache_*`` caches are per store.
Nothing here writes to MLflow. Failures surface as two exceptions the pages turn into guidance:

* :class:`StoreUnavailable` — no tracking database yet, server unreachable, unreadable store;
* :class:`ArtifactMissing` — a run lacks the artifact a page wants to show.
"""

from __future__ import annotations

import io
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboards.settings import sqlite_path

# A dashboard must answer quickly when the server is down, not after MLflow's default 7 retries with back-off.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

TAG = "detoxops."
RUN_TAGS = ("kind", "attack", "defense", "dataset", "data_version", "code_version", "seed", "status",
            "target_label", "model", "failure_reason", "drift_class", "drift_flagged")
REGISTERED_MODELS = ("detoxops-victim", "detoxops-purifier", "detoxops-clean-model", "detoxops-guard")
CACHE_TTL_S = 30


class StoreUnavailable(RuntimeError):
    """The tracking store cannot be read; the message says what to do."""


class ArtifactMissing(FileNotFoundError):
    """A run has no such artifact."""


# ------------------------------------------------------------------------------------------- connection
def check_store(uri: str) -> None:
    """Raise :class:`StoreUnavailable` with guidance unless ``uri`` can be read (cheap; no MLflow import)."""
    db = sqlite_path(uri)
    if uri.startswith("sqlite:") and db is None:
        raise StoreUnavailable(f"Tracking URI {uri!r} is a relative SQLite path; use sqlite:////absolute/path.db")
    if db is not None and not db.is_file():
        raise StoreUnavailable(
            f"No tracking database at `{db}` yet. Run the main job first (`make demo`), or point the dashboard "
            "at an existing store with `MLFLOW_TRACKING_URI=sqlite:////path/to/mlflow.db`."
        )
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3) as reply:
                reply.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreUnavailable(
                f"The tracking server at `{uri}` is unreachable ({reason}). Start it (`mlflow server "
                "--backend-store-uri sqlite:////abs/mlflow.db --host 127.0.0.1 --port 5000`) or set "
                "`MLFLOW_TRACKING_URI` to the right address."
            ) from None


@st.cache_resource(show_spinner=False)
def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _guarded(uri: str, what: str, fn):
    check_store(uri)
    try:
        return fn(client(uri))
    except StoreUnavailable:
        raise
    except Exception as exc:  # MLflow raises many types (MlflowException, SQLAlchemy, requests)
        raise StoreUnavailable(f"Could not read {what} from `{uri}`: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------------ runs
@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading experiments…")
def experiments(uri: str, prefix: str) -> pd.DataFrame:
    """The ``<prefix>/<flow>`` experiments: experiment_id, name, flow."""

    def read(c):
        exps = c.search_experiments(filter_string=f"name LIKE '{prefix}/%'")
        return pd.DataFrame(
            [{"experiment_id": e.experiment_id, "name": e.name, "flow": e.name[len(prefix) + 1:]} for e in exps],
            columns=["experiment_id", "name", "flow"],
        )

    return _guarded(uri, "experiments", read)


RUN_COLUMNS = ["run_id", "run_name", "experiment", "flow", "run_status", "start_time", "end_time", "parent_run_id",
               "root_run_id", "root_run_name", *RUN_TAGS]


@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading runs…")
def runs(uri: str, prefix: str) -> pd.DataFrame:
    """Every run of every ``<prefix>/*`` experiment, newest first, one row per run.

    Columns: ``RUN_COLUMNS`` (tags without their ``detoxops.`` prefix), one column per metric (``ca``, ``asr``,
    …) and ``param.<key>`` per param. ``root_run_id`` is the flow run a nested run belongs to.
    """
    exps = experiments(uri, prefix)
    if exps.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    names = dict(zip(exps.experiment_id, exps.name, strict=True))

    def read(c):
        found, token = [], None
        while True:
            page = c.search_runs(list(names), max_results=5000, page_token=token, order_by=["attributes.start_time DESC"])
            found.extend(page)
            token = page.token
            if not token:
                return found

    rows = []
    for r in _guarded(uri, "runs", read):
        tags = r.data.tags
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "experiment": names.get(r.info.experiment_id, r.info.experiment_id),
            "flow": names.get(r.info.experiment_id, "")[len(prefix) + 1:],
            "run_status": r.info.status,  # MLflow's; "status" is the detoxops.status tag
            "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True) if r.info.end_time else pd.NaT,
            "parent_run_id": tags.get("mlflow.parentRunId"),
        }
        row.update({k: tags.get(TAG + k) for k in RUN_TAGS})
        row.update(r.data.metrics)
        row.update({f"param.{k}": v for k, v in r.data.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in RUN_COLUMNS:
        if col not in df:
            df[col] = None
    parents = dict(zip(df.run_id, df.parent_run_id, strict=True))
    names_by_id = dict(zip(df.run_id, df.run_name, strict=True))
    df["root_run_id"] = [_root(rid, parents) for rid in df.run_id]
    df["root_run_name"] = [names_by_id.get(rid) or rid[:8] for rid in df.root_run_id]
    return df


def _root(run_id: str, parents: dict[str, str | None]) -> str:
    seen = {run_id}
    while (parent := parents.get(run_id)) and parent in parents and parent not in seen:
        seen.add(parent)
        run_id = parent
    return run_id


def runs_of_kind(df: pd.DataFrame, *kinds: str) -> pd.DataFrame:
    return df[df["kind"].isin(kinds)] if not df.empty else df


# ------------------------------------------------------------------------------------------ artifacts
@st.cache_data(ttl=300, show_spinner=False)
def artifact_paths(uri: str, run_id: str, folder: str = "") -> list[str]:
    """Files (recursively) under ``folder`` of a run's artifacts; [] when it has none."""

    def read(c):
        out, stack = [], [folder or None]
        while stack:
            for info in c.list_artifacts(run_id, stack.pop()):
                (stack.append(info.path) if info.is_dir else out.append(info.path))
        return sorted(out)

    return _guarded(uri, f"the artifacts of run {run_id}", read)


def has_artifact(uri: str, run_id: str, path: str) -> bool:
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    return path in artifact_paths(uri, run_id, folder)


@st.cache_data(ttl=3600, max_entries=256, show_spinner="Downloading artifact…")
def artifact_bytes(uri: str, run_id: str, path: str) -> bytes:
    """The content of one artifact; :class:`ArtifactMissing` when the run has none at ``path``."""
    if not has_artifact(uri, run_id, path):
        raise ArtifactMissing(f"run {run_id} has no artifact {path!r}")

    def read(c):
        with tempfile.TemporaryDirectory(prefix="detoxops-dash-") as tmp:
            local = c.download_artifacts(run_id, path, tmp)
            return Path(local).read_bytes()

    return _guarded(uri, f"artifact {path!r} of run {run_id}", read)


def artifact_csv(uri: str, run_id: str, path: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(artifact_bytes(uri, run_id, path)))


def artifact_npz(uri: str, run_id: str, path: str) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` artifact (``allow_pickle=False``: never unpickle what a run stored)."""
    with np.load(io.BytesIO(artifact_bytes(uri, run_id, path)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def runs_with_artifact(uri: str, df: pd.DataFrame, path: str) -> pd.DataFrame:
    """Rows of ``df`` whose run logged ``path``."""
    if df.empty:
        return df
    return df[[has_artifact(uri, rid, path) for rid in df.run_id]]


# ------------------------------------------------------------------------------------------ registry
@st.cache_data(ttl=CACHE_TTL_S, show_spinner="Reading the model registry…")
def registered_models(uri: str) -> pd.DataFrame:
    """One row per registered model version: name, version, aliases, run_id, source, created, description."""

    def read(c):
        rows = []
        for m in c.search_registered_models():
            for v in c.search_model_versions(f"name='{m.name}'"):
                rows.append({
                    "name": m.name,
                    "version": int(v.version),
                    "aliases": ", ".join(sorted(a for a, ver in m.aliases.items() if str(ver) == str(v.version)))
                    if isinstance(m.aliases, dict) else ", ".join(getattr(v, "aliases", []) or []),
                    "run_id": v.run_id,
                    "status": v.status,
                    "source": v.source,
                    "created": pd.to_datetime(v.creation_timestamp, unit="ms", utc=True),
                    "description": v.description or m.description or "",
                })
        cols = ["name", "version", "aliases", "run_id", "status", "source", "created", "description"]
        df = pd.DataFrame(rows, columns=cols)
        return df.sort_values(["name", "version"], ascending=[True, False]).reset_index(drop=True)

    return _guarded(uri, "registered models", read)


def download_model_version(uri: str, name: str, version: int, dst: str | Path) -> Path:
    """Download the files of a registered model version into ``dst``; returns the local folder."""

    def read(c):
        import mlflow.artifacts

        mv = c.get_model_version(name, str(version))
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst), tracking_uri=uri))

    return _guarded(uri, f"model {name} v{version}", read)


def clear_caches() -> None:
    for fn in (experiments, runs, artifact_paths, artifact_bytes, registered_models):
        fn.clear()
