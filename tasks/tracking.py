"""MLflow helpers implementing the tracking conventions of docs/ARCHITECTURE.md.

Experiments ``<prefix>/<flow>``; one parent run per flow run, nested runs per attack / defense (started with an
explicit ``parent_run_id`` because MLflow's active-run stack is thread-local and tasks may run on other
threads or Dask workers); tags ``detoxops.*``; every run records the code version (git commit) and the data
version (DVC / content hash) it used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from tasks import PROJECT_ROOT

__all__ = [
    "resolve_tracking_uri",
    "setup_tracking",
    "experiment_name",
    "git_commit",
    "flatten_params",
    "run",
    "log_dataset",
    "register_model",
]


def resolve_tracking_uri(uri: str, root: str | Path = PROJECT_ROOT) -> str:
    """Make a relative ``sqlite:///x.db`` absolute against ``root`` so every process (Prefect workers,
    Streamlit, the CLI) hits the same database whatever its working directory. ``MLFLOW_TRACKING_URI``
    in the environment wins over params."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((Path(root) / uri[len(prefix) :]).resolve())
    return uri


def setup_tracking(tracking_cfg, root: str | Path = PROJECT_ROOT) -> str:
    """Point MLflow at the configured store (process-global) and return the resolved URI."""
    uri = resolve_tracking_uri(tracking_cfg.mlflow_uri, root)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # subprocesses (Dask workers, `mlflow models serve`) follow
    return uri


def experiment_name(flow: str, prefix: str = "detoxops") -> str:
    return f"{prefix}/{flow}"


def _artifact_root(uri: str, root: Path) -> str | None:
    """Artifacts of a local SQLite store go to ``mlartifacts/`` next to the database file (a relative database path
    is taken from ``root``), not the CWD's ``mlruns``: a store in a temp dir keeps its artifacts there too."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db = db if db.is_absolute() else root / db
        return (db.parent / "mlartifacts").resolve().as_uri()
    if uri.startswith("sqlite:"):  # in-memory or unusual forms
        return (root / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(name: str, root: str | Path = PROJECT_ROOT) -> str:
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(mlflow.get_tracking_uri(), Path(root)))
    except mlflow.exceptions.MlflowException:
        # another process created it between our lookup and create
        return client.get_experiment_by_name(name).experiment_id


@functools.cache
def git_commit(root: str | Path = PROJECT_ROOT) -> str:
    """Current commit (with ``-dirty`` when the tree has changes), or ``unknown`` outside a git checkout."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{"victim.epochs": "10", …}`` from a params model or nested dict (MLflow params are flat strings)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten_params(value, f"{prefix}{key}."))
        return out
    text = json.dumps(obj) if isinstance(obj, list | dict) else str(obj)
    out[prefix[:-1]] = text[:6000]  # MLflow's param value limit
    return out


@contextlib.contextmanager
def run(
    flow: str,
    run_name: str,
    *,
    kind: str,
    prefix: str = "detoxops",
    parent_run_id: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Any = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, with ``run_id``) a run in ``<prefix>/<flow>`` tagged with the conventions.

    Safe on any thread: the run is made the active one only for the body, on the calling thread.
    """
    all_tags = {
        "detoxops.kind": kind,
        "detoxops.flow": flow,
        "detoxops.code_version": git_commit(),
    }
    all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    if run_id is None:
        exp_id = ensure_experiment(experiment_name(flow, prefix))
        active = mlflow.start_run(
            experiment_id=exp_id, run_name=run_name, parent_run_id=parent_run_id, tags=all_tags,
            nested=parent_run_id is not None,
        )
    else:
        active = mlflow.start_run(run_id=run_id, nested=True)
        mlflow.set_tags(all_tags)
    with active:
        if params is not None:
            mlflow.log_params(flatten_params(params))
        yield active


def log_dataset(path: str | Path, name: str, digest: str, context: str, tags: Mapping[str, str] | None = None) -> None:
    """Record a dataset input on the active run: the folder as source, the DVC / content hash as digest."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow warns that local-path resolution is "experimental"
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(Path(path).resolve()))
    ds = MetaDataset(source=source, name=name, digest=digest[:36])
    mlflow.log_input(ds, context=context, tags=dict(tags or {}))


def register_model(model_uri: str, name: str, alias: str = "champion", tags: Mapping[str, str] | None = None) -> str:
    """Register ``model_uri`` as a new version of ``name``, point ``alias`` at it and return the version.

    MLflow 3 reserves ``latest`` (``models:/name/latest`` already means the newest), so only ``champion`` /
    other aliases are set.
    """
    client = MlflowClient()
    try:
        mv = mlflow.register_model(model_uri, name)
    except mlflow.exceptions.MlflowException:
        if not model_uri.startswith("runs:/"):
            raise
        # MLflow 3 registers only *logged models* through register_model; a plain artifact folder (our
        # safetensors victim / purifier folders) becomes a model version pointing at that run's artifacts.
        run_id, _, artifact_path = model_uri[len("runs:/") :].partition("/")
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException:
            pass  # already registered
        mv = client.create_model_version(name, source, run_id=run_id)
    client.set_registered_model_alias(name, alias, mv.version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, mv.version, key, str(value))
    return str(mv.version)
