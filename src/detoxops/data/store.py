"""Content-addressed dataset versions on disk.

A version is ``<root>/<name>/<hash12>/`` holding one saved :class:`ImageSet` per split (``train/``, ``test/``,
…) and ``version.json``. The hash covers every split's content hash, so identical data always lands in the
same folder: storing it again finds the existing version and leaves it untouched. Writes go to a temp folder
that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from detoxops.data.imageset import FORMAT_VERSION, ImageSet, read_record
from detoxops.fileio import atomic_dir, temp_path_for

__all__ = ["VERSION_FILE", "version_hash", "save_version", "load_version", "version_info", "is_version_dir"]

VERSION_FILE = "version.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def version_hash(splits: dict[str, ImageSet]) -> str:
    """sha256 over the sorted ``split → content hash`` pairs."""
    if not splits:
        raise ValueError("a dataset version needs at least one split")
    table = {name: ds.content_hash() for name, ds in sorted(splits.items())}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def is_version_dir(path: Path) -> bool:
    return (Path(path) / VERSION_FILE).is_file()


def save_version(
    splits: dict[str, ImageSet],
    root: str | Path | None,
    name: str,
    source: str,
    extra: dict[str, Any] | None = None,
    *,
    at: str | Path | None = None,
    overwrite: bool = False,
    files: dict[str, str] | None = None,
) -> Path:
    """Store ``splits`` as ``<root>/<name>/<hash12>/`` and return that path (the existing one if present).

    ``files`` (``{file name: text}``) are written beside ``version.json`` in the same atomic step, e.g. the
    per-sample decisions that produced the version; they are not part of its hash.

    ``at`` stores the version in exactly that folder instead (a pipeline output such as ``dvc.yaml``'s
    ``pipeline/raw``): an identical version already there is kept; a different one is an error unless
    ``overwrite``, which replaces it atomically once the new one is complete.
    """
    if not _NAME_RE.match(name):
        raise ValueError(
            f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (no path separators)"
        )
    for split in splits:
        if not _NAME_RE.match(split):
            raise ValueError(f"split name {split!r} must be letters, digits, '.', '_' or '-'")
    for file_name in files or {}:
        if not _NAME_RE.match(file_name) or file_name == VERSION_FILE or file_name in splits:
            raise ValueError(f"save_version: extra file name {file_name!r} must be a plain file name, not "
                             f"{VERSION_FILE} or a split")
    split_hashes = {s: ds.content_hash() for s, ds in sorted(splits.items())}
    full = hashlib.sha256(json.dumps(split_hashes, sort_keys=True).encode()).hexdigest()
    if at is None and root is None:
        raise ValueError("save_version needs a root folder or an explicit destination (at=)")
    dest = Path(at) if at is not None else Path(root) / name / full[:12]
    if dest.exists():
        existing = _read_info(dest) if is_version_dir(dest) else None
        if existing is not None and existing.get("hash") == full:
            _refresh_files(dest, files)
            return dest
        if at is None:
            raise FileExistsError(
                f"{dest} exists but is not this dataset version (hash prefix collision or a foreign folder); "
                "it was left untouched"
            )
        if not overwrite:
            raise FileExistsError(f"{dest} exists and holds other data (pass overwrite / --force to replace it)")
    first = next(iter(splits.values()))
    info = {
        "format": FORMAT_VERSION,
        "name": name,
        "hash": full,
        "source": source,
        # no creation time: the folder is content-addressed and DVC hashes every file in it, so a timestamp made
        # the same data a different DVC version on every machine (issue #28); the folder's mtime says when
        "class_names": first.class_names,
        "image_shape": list(first.image_shape),
        "splits": {
            s: {
                "count": len(ds),
                "content_hash": split_hashes[s],
                "class_counts": ds.class_counts().tolist(),
                "num_poisoned": int(ds.poisoned.sum()),
            }
            for s, ds in sorted(splits.items(), key=_split_order)
        },
        **(extra or {}),
    }
    for s, ds in splits.items():
        if ds.class_names != first.class_names:
            raise ValueError(f"split {s!r} has class names {ds.class_names}, expected {first.class_names}")
    try:
        with atomic_dir(dest, overwrite=at is not None and overwrite) as tmp:
            for s, ds in splits.items():
                ds.write_into(tmp / s)
            for file_name, text in (files or {}).items():
                (tmp / file_name).write_text(text)
            (tmp / VERSION_FILE).write_text(json.dumps(info, indent=2) + "\n")
    except FileExistsError:  # a concurrent writer stored the same content first: theirs is as good as ours
        if is_version_dir(dest) and _read_info(dest).get("hash") == full:
            return dest
        raise
    return dest


def _refresh_files(dest: Path, files: dict[str, str] | None) -> None:
    """An existing identical version gets this run's ``files`` (each replaced atomically where it differs)."""
    for file_name, text in (files or {}).items():
        path = dest / file_name
        if not path.is_file() or path.read_text() != text:
            tmp = temp_path_for(path)
            tmp.write_text(text)
            os.replace(tmp, path)


def _split_order(item: tuple[str, ImageSet]) -> tuple[int, str]:
    order = {"train": 0, "val": 1, "test": 2}
    return order.get(item[0], 3), item[0]


def _read_info(path: Path) -> dict[str, Any]:
    return read_record(Path(path) / VERSION_FILE, f"not a dataset version folder (no {VERSION_FILE}): {path}")


def version_info(path: str | Path) -> dict[str, Any]:
    """The parsed ``version.json`` of a version folder, with ``created``: when the folder was written (its mtime,
    UTC; versions written before 2026-12-06 recorded it in the file)."""
    info = _read_info(Path(path))
    info.setdefault("created", written_at(path))
    return info


def written_at(folder: str | Path) -> str:
    """When a version folder was written: its mtime in UTC, ``YYYY-MM-DDTHH:MM:SSZ``. Not stored in the folder,
    which must stay a pure function of its content (DVC hashes every file in it)."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(Path(folder).stat().st_mtime))


def load_version(path: str | Path, mmap: bool = True, verify: bool = False) -> dict[str, ImageSet]:
    """``{split: ImageSet}`` of a version folder; images are memory-mapped unless ``mmap=False``.

    ``verify`` recomputes every split's content hash against ``version.json``.
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"dataset version not found: {folder}")
    info = _read_info(folder)
    out = {}
    for split, entry in info["splits"].items():
        ds = ImageSet.load(folder / split, mmap=mmap)
        if verify and ds.content_hash() != entry["content_hash"]:
            raise ValueError(f"{folder / split}: content hash does not match {VERSION_FILE} (files changed)")
        out[split] = ds
    return out
