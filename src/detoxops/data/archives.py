"""Read class-folder trees from a directory, a tar archive (``.tar``, ``.tar.gz``, ``.tgz``, …) or a ``.zip``.

Nothing is ever extracted to disk: members are streamed and read into memory one at a time, which is both
safer and faster (CIFAR-10's 60k JPEGs decode in one sequential pass over the gzip stream). Member names are
still checked as if they were to be extracted: an absolute path, a ``..`` component, a link or a special file
makes the whole archive an error, because an archive containing them is malformed or malicious.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["Entry", "ARCHIVE_SUFFIXES", "is_archive", "iter_entries", "safe_member_name"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")


@dataclass
class Entry:
    """One member of a tree: its relative POSIX path and its bytes (``None`` for a folder)."""

    path: str
    data: bytes | None

    @property
    def is_dir(self) -> bool:
        return self.data is None


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def safe_member_name(name: str, archive: Path) -> str:
    """The member's normalised relative path, or ``ValueError`` if it would land outside the target folder."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) >= 2 and posix[1] == ":"):
        raise ValueError(f"{archive}: member {name!r} has an absolute path (would escape the target folder)")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(
            f"{archive}: member {name!r} contains '..' (would escape the target folder: zip-slip)"
        )
    return "/".join(parts)


def iter_entries(path: Path) -> Iterator[Entry]:
    """Entries of a directory or archive, in the container's own order (callers sort what they need)."""
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path}")
    if path.is_dir():
        return _iter_directory(path)
    if path.name.lower().endswith(".zip"):
        return _iter_zip(path)
    if is_archive(path):
        return _iter_tar(path)
    raise ValueError(
        f"{path}: unsupported file type (expected a folder, {', '.join(ARCHIVE_SUFFIXES)} or .npz)"
    )


def _iter_tar(path: Path) -> Iterator[Entry]:
    try:
        # "r|*": a forward-only stream, so a .tar.gz is decompressed exactly once, in order.
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                rel = safe_member_name(member.name, path)
                if member.issym() or member.islnk():
                    raise ValueError(
                        f"{path}: member {member.name!r} is a {'symbolic' if member.issym() else 'hard'} link "
                        f"to {member.linkname!r}; links are not allowed in dataset archives"
                    )
                if member.isdir():
                    if rel:
                        yield Entry(rel, None)
                    continue
                if not member.isfile():
                    raise ValueError(f"{path}: member {member.name!r} is a special file (device or FIFO)")
                try:  # second guard: the standard library's own extraction filter must accept it too
                    tarfile.data_filter(member, "/nonexistent-dataset-root")
                except tarfile.FilterError as exc:
                    raise ValueError(f"{path}: member {member.name!r} rejected: {exc}") from None
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise ValueError(f"{path}: member {member.name!r} is truncated")
                yield Entry(rel, data)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None


def _iter_zip(path: Path) -> Iterator[Entry]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not a readable zip archive ({exc})") from None
    with archive:
        for info in archive.infolist():
            rel = safe_member_name(info.filename, path)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ValueError(
                    f"{path}: member {info.filename!r} is a symbolic link; links are not allowed"
                )
            if info.is_dir():
                if rel:
                    yield Entry(rel, None)
                continue
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise ValueError(f"{path}: member {info.filename!r} is corrupt ({exc})") from None
            yield Entry(rel, data)


def _iter_directory(root: Path) -> Iterator[Entry]:
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for d in list(dirnames):
            full = here / d
            if full.is_symlink():
                raise ValueError(f"{full}: symlinked folders are not supported in a dataset tree")
            yield Entry(PurePosixPath(full.relative_to(root)).as_posix(), None)
        for f in sorted(filenames):
            full = here / f
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(real_root):
                    raise ValueError(f"{full}: symlink points outside the dataset folder ({target})")
            if not full.is_file():
                if full.is_symlink():
                    raise ValueError(f"{full}: broken symlink")
                continue
            try:
                data = full.read_bytes()
            except OSError as exc:
                raise ValueError(f"{full}: unreadable file ({exc})") from None
            yield Entry(PurePosixPath(full.relative_to(root)).as_posix(), data)
