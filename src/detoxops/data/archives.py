"""Read class-folder trees from a directory, a tar archive (``.tar``, ``.tar.gz``, ``.tgz``, …) or a ``.zip``.

Nothing is ever extracted to disk: members are streamed, and a member's bytes are read only when the consumer
asks for them (:attr:`Entry.data`) -- a member that is skipped (a README, a ``.DS_Store``) is never held in
memory, whatever its size. Member names are still checked as if they were to be extracted: an absolute path,
a ``..`` component, a link or a special file makes the whole archive an error, because an archive containing
them is malformed or malicious.

Limits (``data.limits``, see :mod:`detoxops.data.limits`): a member larger than ``member_bytes`` is refused when
it is read (its size comes from the archive's header, so nothing is decompressed first), and the sizes of all
members together may not exceed ``archive_bytes`` (counted from the headers as the stream advances, skipped
members included, so a decompression bomb is refused before it is inflated).
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from detoxops.data.limits import default_limits, limit_error

if TYPE_CHECKING:
    from detoxops.config import DataLimits

__all__ = ["Entry", "ARCHIVE_SUFFIXES", "is_archive", "iter_entries", "safe_member_name"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")


class Entry:
    """One member of a tree: its relative POSIX path and its bytes (``None`` for a folder).

    ``Entry(path, data)`` holds the bytes; ``Entry(path, size=n, read=f)`` reads them on first access of
    :attr:`data` (archive members: valid only until the iterator advances, as in a tar stream).
    """

    __slots__ = ("path", "size", "_data", "_read", "_is_dir")

    def __init__(
        self,
        path: str,
        data: bytes | None = None,
        *,
        size: int | None = None,
        read: Callable[[], bytes] | None = None,
    ) -> None:
        self.path = path
        self._data = data
        self._read = read
        self._is_dir = data is None and read is None
        self.size = len(data) if data is not None else (0 if size is None else int(size))

    @property
    def is_dir(self) -> bool:
        return self._is_dir

    @property
    def data(self) -> bytes | None:
        if self._data is None and self._read is not None:
            self._data, self._read = self._read(), None
        return self._data

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, {'dir' if self.is_dir else f'{self.size} bytes'})"


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


def iter_entries(path: Path, limits: DataLimits | None = None) -> Iterator[Entry]:
    """Entries of a directory or archive, in the container's own order (callers sort what they need).

    ``limits``: ``member_bytes`` / ``archive_bytes`` (default :class:`detoxops.config.DataLimits`)."""
    limits = limits if limits is not None else default_limits()
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {path}")
    if path.is_dir():
        return _iter_directory(path, limits)
    if path.name.lower().endswith(".zip"):
        return _iter_zip(path, limits)
    if is_archive(path):
        return _iter_tar(path, limits)
    raise ValueError(
        f"{path}: unsupported file type (expected a folder, {', '.join(ARCHIVE_SUFFIXES)} or .npz)"
    )


def _check_member(where: str, name: str, size: int, limits: DataLimits) -> None:
    if size > limits.member_bytes:
        raise limit_error(where, f"member {name!r} ({size:,} bytes uncompressed): its size", size,
                          "member_bytes", limits.member_bytes)


def _check_total(where: str, total: int, limits: DataLimits) -> None:
    if total > limits.archive_bytes:
        raise limit_error(where, "the uncompressed size of its members (so far)", total, "archive_bytes",
                          limits.archive_bytes)


def _iter_tar(path: Path, limits: DataLimits) -> Iterator[Entry]:
    total = 0
    try:
        # "r|*": a forward-only stream, so a .tar.gz is decompressed exactly once, in order; a member that is
        # not read is skipped by the stream in bounded chunks, never held whole.
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
                total += member.size
                _check_total(str(path), total, limits)
                yield Entry(rel, size=member.size, read=_tar_reader(tar, member, path, limits))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ValueError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None


def _tar_reader(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, limits: DataLimits):
    def read() -> bytes:
        _check_member(str(path), member.name, member.size, limits)
        try:
            handle = tar.extractfile(member)
            data = handle.read(member.size) if handle is not None else b""
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise ValueError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
        if len(data) != member.size:
            raise ValueError(f"{path}: member {member.name!r} is truncated")
        return data

    return read


def _iter_zip(path: Path, limits: DataLimits) -> Iterator[Entry]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        # The central directory lists every size up front: a bomb is refused before anything is inflated.
        _check_total(str(path), sum(max(info.file_size, 0) for info in infos), limits)
        for info in infos:
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
            yield Entry(rel, size=info.file_size, read=_zip_reader(archive, info, path, limits))


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limits: DataLimits):
    def read() -> bytes:
        _check_member(str(path), info.filename, info.file_size, limits)
        try:
            with archive.open(info) as handle:
                # at most one byte past the limit, whatever the (untrusted) header claims
                data = handle.read(limits.member_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ValueError(f"{path}: member {info.filename!r} is corrupt ({exc})") from None
        _check_member(str(path), info.filename, len(data), limits)
        return data

    return read


def _iter_directory(root: Path, limits: DataLimits) -> Iterator[Entry]:
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
            rel = PurePosixPath(full.relative_to(root)).as_posix()
            yield Entry(rel, size=full.stat().st_size, read=_file_reader(full, str(root), rel, limits))


def _file_reader(full: Path, root: str, rel: str, limits: DataLimits):
    def read() -> bytes:
        _check_member(root, rel, full.stat().st_size, limits)
        try:
            with full.open("rb") as fh:
                data = fh.read(limits.member_bytes + 1)
        except OSError as exc:
            raise ValueError(f"{full}: unreadable file ({exc})") from None
        _check_member(root, rel, len(data), limits)
        return data

    return read
