"""DVC versioning of datasets produced inside flows: repo init, ``dvc add``, push to the default remote.

DVC resolves relative targets against the process CWD (not the repo root), so every call here uses absolute
paths. DVC holds a repo lock: calls are serialised within a process and wait for other processes' locks.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tasks import PROJECT_ROOT

__all__ = ["ensure_repo", "version_path", "data_status"]

_LOCK = threading.Lock()


def ensure_repo(root: str | Path = PROJECT_ROOT, remote: str | Path = ".dvc-storage") -> Path:
    """``dvc init`` (``--no-scm`` outside git) and a default local remote ``remote`` (relative to ``root``)
    unless the repo already has a default remote."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    with _LOCK:
        if not (root / ".dvc").is_dir():
            Repo.init(str(root), no_scm=not (root / ".git").exists())
        with Repo(str(root), _wait_for_lock=True) as repo:
            if not repo.config.get("core", {}).get("remote"):
                remote_path = Path(remote) if Path(remote).is_absolute() else root / remote
                remote_path.mkdir(parents=True, exist_ok=True)
                with repo.config.edit() as conf:
                    conf["remote"]["local"] = {"url": str(remote_path)}
                    conf["core"]["remote"] = "local"
    return root


def version_path(path: str | Path, root: str | Path = PROJECT_ROOT, push: bool = True) -> dict[str, Any]:
    """``dvc add`` a file or folder inside ``root`` (and push it to the default remote).

    Returns ``{"path", "dvc_file", "md5", "nfiles", "size"}``; ``md5`` is DVC's hash (``….dir`` for folders),
    the data version recorded in MLflow.
    """
    from dvc.repo import Repo

    root = Path(root).resolve()
    target = Path(path).resolve()
    if not target.exists():
        raise FileNotFoundError(f"cannot version {target}: no such file or folder")
    if root not in target.parents:
        raise ValueError(f"cannot version {target}: outside the DVC repo {root}")
    with _LOCK, Repo(str(root), _wait_for_lock=True) as repo:
        # DVC would print a "git add <file>.dvc" hint per dataset (twice, through Prefect's log capture); the
        # .dvc pointer's path is returned instead and the flows report it once.
        repo.scm_context.quiet = True
        stages = repo.add(str(target))
        out = stages[0].outs[0]
        if push:
            repo.push(targets=[str(target)])
        return {
            "path": str(target),
            "dvc_file": str(target.with_name(target.name + ".dvc")),
            "md5": str(out.hash_info.value),
            "nfiles": out.meta.nfiles,
            "size": out.meta.size,
        }


def data_status(root: str | Path = PROJECT_ROOT) -> dict[str, Any]:
    """``dvc status`` of the pipeline and tracked data (``{}`` when everything is up to date)."""
    from dvc.repo import Repo

    with _LOCK, Repo(str(Path(root).resolve()), _wait_for_lock=True) as repo:
        return repo.status()
