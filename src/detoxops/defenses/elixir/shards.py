"""Streaming shard storage: each shard's arrays in one ``.npz`` written atomically (no pickle), so a run
interrupted after k shards resumes at shard k + 1.

Work folders are keyed by everything that determines their content (:func:`open_work_store`):
``<root>/<key>/`` with ``key`` a digest of the run's fingerprint (data, models, parameters). A run whose data,
parameters or models changed — or one re-started after a failure with other settings — gets a folder of its own
instead of tripping over the leftovers of another; a run with the same fingerprint finds its finished shards and
resumes. Folders of other fingerprints are removed once stale (see :func:`clean_stale`). A shard that cannot be
read back whole (a truncated or corrupted file, wrong arrays or lengths) raises :class:`DamagedShardError`,
which names the file; :class:`~detoxops.defenses.dataelixir.DataElixir` then recomputes that shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["ShardStore", "DamagedShardError", "fingerprint_key", "open_work_store", "clean_stale",
           "STALE_AFTER_S", "KEEP_RECENT", "BUSY_S"]

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
STALE_AFTER_S = 24 * 3600
"""A work folder of another fingerprint unused for this long is removed."""
KEEP_RECENT = 3
"""At most this many work folders are kept per root (the most recently used)…"""
BUSY_S = 600
"""…except that a folder used within this many seconds is never removed (a concurrent run may be writing it)."""


class DamagedShardError(ValueError):
    """A stored shard cannot be read back whole; the message names the file."""


def fingerprint_key(fingerprint: dict) -> str:
    """16 hex digits of sha256 over the fingerprint's canonical JSON: the name of its work folder."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


class ShardStore:
    """Shards of one run in ``folder``; ``fingerprint`` (JSON-able) must match what the folder already holds."""

    def __init__(self, folder: str | Path, fingerprint: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / FINGERPRINT
        text = json.dumps(fingerprint, sort_keys=True)
        if meta.is_file() and meta.read_text() != text:
            raise ValueError(
                f"{self.folder}: holds shards of a different run (data, params or models changed); "
                f"delete {self.folder} or use another work folder"
            )
        tmp = self.folder / f".{FINGERPRINT}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(text)
        os.replace(tmp, meta)  # also marks the folder as used now (its mtime)
        self._clean_partial_writes()

    def _clean_partial_writes(self) -> None:
        """``.shard-*`` temp files left by a killed write (older than BUSY_S: not a concurrent writer's)."""
        now = time.time()
        for tmp in self.folder.glob(".shard-*"):
            try:
                if now - tmp.stat().st_mtime > BUSY_S:
                    tmp.unlink()
            except OSError:
                pass

    def touch(self) -> None:
        """Mark the folder as in use (its fingerprint file's mtime), so cleaning leaves it alone."""
        try:
            os.utime(self.folder / FINGERPRINT)
        except OSError:
            pass

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.npz"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def save(self, index: int, **arrays: np.ndarray) -> None:
        tmp = self.folder / f".shard-{index:05d}.{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path(index))
        self.touch()

    def load(self, index: int, keys: set[str] | None = None, length: int | None = None) -> dict[str, np.ndarray]:
        """The arrays of shard ``index``; with ``keys`` / ``length`` also checks it holds exactly those arrays,
        each with ``length`` rows. Anything unreadable raises :class:`DamagedShardError`."""
        path = self.path(index)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise DamagedShardError(f"{path}: damaged shard ({type(exc).__name__}: {exc})") from None
        if keys is not None and set(arrays) != set(keys):
            raise DamagedShardError(f"{path}: damaged shard (arrays {sorted(arrays)}, expected {sorted(keys)})")
        if length is not None:
            wrong = {k: a.shape[:1] for k, a in arrays.items() if a.ndim == 0 or a.shape[0] != length}
            if wrong:
                raise DamagedShardError(f"{path}: damaged shard (rows {wrong}, expected {length})")
        return arrays

    def discard(self, index: int) -> None:
        self.path(index).unlink(missing_ok=True)


def _last_used(folder: Path) -> float:
    try:
        return (folder / FINGERPRINT).stat().st_mtime
    except OSError:
        return folder.stat().st_mtime


def clean_stale(root: str | Path, keep: str | None = None, *, keep_recent: int = KEEP_RECENT,
                stale_after_s: float = STALE_AFTER_S, busy_s: float = BUSY_S) -> list[Path]:
    """Remove work folders under ``root`` other than ``keep``: those unused for ``stale_after_s``, and those
    beyond the ``keep_recent`` most recently used — never one used in the last ``busy_s`` seconds. Also removes
    shards of the old unkeyed layout stored directly in ``root``. Returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    legacy = [p for p in root.iterdir() if p.is_file() and (p.name == FINGERPRINT or p.name.startswith(
        ("shard-", ".shard-")))]
    for p in legacy:  # unkeyed shards (written before work folders were keyed): their run is unknown
        p.unlink(missing_ok=True)
        removed.append(p)
    now = time.time()
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p.name != keep and (p / FINGERPRINT).exists()),
                     key=_last_used, reverse=True)
    recent_slots = max(keep_recent - (1 if keep else 0), 0)
    for rank, folder in enumerate(folders):
        age = now - _last_used(folder)
        if age < busy_s:
            continue
        if age >= stale_after_s or rank >= recent_slots:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d stale work folder(s) under %s", len(removed), root)
    return removed


def open_work_store(root: str | Path, fingerprint: dict, **clean_options) -> ShardStore:
    """The shard store of ``fingerprint`` under ``root`` (``<root>/<fingerprint_key>/``), created or resumed;
    stale work folders of other fingerprints are cleaned first (:func:`clean_stale`)."""
    key = fingerprint_key(fingerprint)
    clean_stale(root, keep=key, **clean_options)
    return ShardStore(Path(root) / key, fingerprint)
