"""Where the dashboard reads from: the MLflow tracking URI, the experiment prefix and the dataset root.

Resolution order (first wins):

1. environment: ``MLFLOW_TRACKING_URI``, ``DETOXOPS_EXPERIMENT_PREFIX``, ``DETOXOPS_DATA_ROOT``;
2. ``params.yaml`` (``DETOXOPS_PARAMS`` or the repository's), section ``tracking`` / ``data.root``;
3. the defaults of :class:`detoxops.config.TrackingConfig`.

A relative SQLite URI (``sqlite:///mlflow.db``) or data root is resolved against the folder of the params
file, so the dashboard reads the same store as ``make demo`` whatever directory Streamlit was started from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    tracking_uri: str
    experiment_prefix: str
    data_root: Path
    project_root: Path
    params_error: str | None = None  # why params.yaml could not be read (the defaults were used instead)


def absolute_sqlite_uri(uri: str, base: Path) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////abs/base/rel.db``; other URIs unchanged."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = uri[len(prefix):]
    if path.startswith("/") or path == ":memory:":
        return uri
    return prefix + str((base / path).resolve())


def sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute ``sqlite:////…`` URI, else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    return Path(path) if path.startswith("/") else None


def params_path() -> Path:
    return Path(os.environ.get("DETOXOPS_PARAMS", REPO_ROOT / "params.yaml")).resolve()


def load_settings() -> Settings:
    params_path_ = params_path()
    base = params_path_.parent
    uri, prefix, data_root, error = "sqlite:///mlflow.db", "detoxops", "data", None
    if params_path_.is_file():
        try:
            from detoxops.config import load_params

            params = load_params(params_path_)
            uri, prefix, data_root = params.tracking.mlflow_uri, params.tracking.experiment_prefix, params.data.root
        except Exception as exc:  # a broken params.yaml must not take the dashboard down
            error = f"{params_path_}: {exc}"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    prefix = os.environ.get("DETOXOPS_EXPERIMENT_PREFIX") or prefix
    data_root = os.environ.get("DETOXOPS_DATA_ROOT") or data_root
    root = Path(data_root)
    return Settings(
        tracking_uri=absolute_sqlite_uri(uri, base),
        experiment_prefix=prefix,
        data_root=root if root.is_absolute() else (base / root).resolve(),
        project_root=base,
        params_error=error,
    )
