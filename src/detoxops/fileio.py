"""Atomic writes shared by every layer: a folder (or file) appears complete or not at all.

``atomic_dir(dest)`` writes into a temp folder beside ``dest`` and renames it into place; killed writers' temp
folders are recognised (host + pid in the name) and removed by the next write beside them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

__all__ = ["atomic_dir", "atomic_write_text", "clean_stale_temps", "temp_path_for", "STALE_TEMP_SECONDS"]


class atomic_dir:  # noqa: N801 - used as a context manager, reads like a function
    """``with atomic_dir(dest) as tmp:`` — write into ``tmp``; on success it becomes ``dest`` in one rename.

    On any error the temp folder is removed and ``dest`` is untouched. With ``overwrite`` an existing
    ``dest`` is moved aside only after the new folder is complete, then deleted.

    A write that is killed (SIGKILL, power loss) cannot remove its temp folder, so every write first removes
    the *stale* temp folders next to its destination (:func:`clean_stale_temps`): those of a process on this
    host that no longer runs (the name carries host and pid: ``<dest>.tmp-<host>-<pid>-<uuid>``), and older
    ones without a pid whose contents have not changed for :data:`STALE_TEMP_SECONDS`. A concurrent live
    write is never touched.
    """

    def __init__(self, dest: str | Path, overwrite: bool = False) -> None:
        self.dest = Path(dest)
        self.overwrite = overwrite
        self.tmp = temp_path_for(self.dest)

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.dest.parent)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            if self.dest.exists():
                if not self.overwrite:
                    raise FileExistsError(f"{self.dest} appeared while writing it")
                old = self.dest.with_name(f"{self.dest.name}.old-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}")
                os.replace(self.dest, old)
                os.replace(self.tmp, self.dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.dest)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


STALE_TEMP_SECONDS = 6 * 3600
"""A temp folder without a live owner's pid (an older detoxops, another host) counts as stale after this long
without a change to anything in it."""
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^(?P<dest>.+)\.(?:tmp|old)-(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-)?[0-9a-f]{32}$")


def temp_path_for(dest: str | Path) -> Path:
    """A fresh temp path beside ``dest`` named so that :func:`clean_stale_temps` recognises it once its writer
    is gone (``<dest>.tmp-<host>-<pid>-<uuid>``); for writers that cannot use :class:`atomic_dir` itself."""
    dest = Path(dest)
    return dest.with_name(f"{dest.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}")


def atomic_write_text(dest: str | Path, text: str) -> Path:
    """Write ``text`` to ``dest`` (parents created) through a temp file beside it and a rename, so a reader or a
    killed writer never leaves a half-written file where an older complete one stood."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        tmp.write_text(text)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def clean_stale_temps(parent: str | Path, *, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove the temp folders of killed :class:`atomic_dir` writes in ``parent``; returns what was removed."""
    removed: list[Path] = []
    try:
        candidates = [p for p in Path(parent).iterdir() if _TEMP_NAME.match(p.name) and p.is_dir()]
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        m = _TEMP_NAME.match(path.name)
        if m["pid"] is not None and m["host"] == _HOST:
            stale = not _pid_alive(int(m["pid"]))
        else:  # no pid (written before it was recorded) or another host: judged by age
            stale = now - _newest_mtime(path) > max_age
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest
