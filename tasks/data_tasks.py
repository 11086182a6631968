"""Ingest a dataset source into a content-addressed version and version it with DVC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tasks import PROJECT_ROOT
from tasks.versioning import ensure_repo, version_path

__all__ = ["ingest_dataset", "version_dataset", "dataset_identity"]


def _flaky_io(task, task_run, state) -> bool:
    """Retry only what a retry can fix (an I/O error of the file system), not bad input: a refused dataset fails
    at once instead of being decoded three times."""
    try:
        state.result()
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError):
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


@task(name="ingest", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=_flaky_io)
def ingest_dataset(source: str, data_cfg: dict[str, Any], root: str | None = None) -> dict[str, Any]:
    """Load + validate ``source`` (builtin name, folder, archive or stored version) into ``<root>/<name>/<hash12>``.

    Not cached by Prefect: ``ingest`` is itself content-addressed (re-ingesting the same content returns the
    existing folder) and a folder / archive source can change between runs. Retries cover flaky file systems
    (``OSError``), not bad input (``ValueError`` and the like fail at once).
    """
    from detoxops.config import DataConfig
    from detoxops.data import ingest, version_info

    cfg = DataConfig(**data_cfg)
    root_path = Path(root or cfg.root)
    if not root_path.is_absolute():
        root_path = PROJECT_ROOT / root_path
    from tasks.progress import task_progress

    with task_progress("ingest"):
        path = ingest(source, root_path, cfg, progress=False)
    info = version_info(path)
    return {"path": str(path), "hash": info.get("hash", path.name), "name": path.parent.name, "info": _json_safe(info)}


@task(name="dvc-version", retries=2, retry_delay_seconds=[2, 10])
def version_dataset(path: str, root: str = str(PROJECT_ROOT), remote: str = ".dvc-storage") -> dict[str, Any]:
    """``dvc add`` + ``dvc push`` the version folder; returns DVC's hash (the data version MLflow records)."""
    ensure_repo(root, remote)
    return version_path(path, root)


def dataset_identity(ingested: dict[str, Any], dvc: dict[str, Any] | None) -> str:
    """The data version recorded on runs: DVC's md5 when versioned, else the content hash."""
    return (dvc or {}).get("md5") or ingested["hash"]


def _json_safe(info: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(info, default=str))
