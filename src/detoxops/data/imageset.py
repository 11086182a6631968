"""``ImageSet``: the one in-memory and on-disk representation of a labelled image set.

Images are uint8 NHWC RGB, labels int64. Every sample carries its provenance (index in its source split, the
label it had there, a ground-truth poison flag) so that poisoning, sanitising and purification stay traceable.

On disk an ``ImageSet`` is a folder of plain ``.npy`` files (``images.npy`` is memory-mapped on load, so a
50k-image split opens instantly) plus ``meta.json``: a few large files, which is what DVC handles well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# the atomic-write helpers live in detoxops.fileio (every layer may import it); re-exported for older imports
from detoxops.fileio import atomic_dir, clean_stale_temps, temp_path_for

__all__ = ["ImageSet", "FORMAT_VERSION", "atomic_dir", "clean_stale_temps", "temp_path_for"]

FORMAT_VERSION = 1
"""Bumped when the on-disk layout changes; ``ImageSet.load`` rejects folders written by another version."""

_ARRAY_FILES = ("images", "labels", "source_index", "original_labels", "poisoned")
_HASH_CHUNK = 1 << 24  # hash images 16 MiB at a time so a memory-mapped split is never copied whole


@dataclass(eq=False)
class ImageSet:
    """A labelled image set with per-sample provenance.

    Only ``images``, ``labels`` and ``class_names`` are required: ``source_index`` defaults to ``arange(N)``,
    ``original_labels`` to a copy of ``labels``, ``poisoned`` to all False (unknown status), ``meta`` to ``{}``.
    Integer label / index arrays of any integer dtype are converted to int64; anything else that breaks the
    conventions (dtype, shape, range) raises ``ValueError`` naming the field.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source_index: np.ndarray | None = None
    original_labels: np.ndarray | None = None
    poisoned: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray):
            raise ValueError(f"ImageSet.images must be a numpy array, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise ValueError(
                f"ImageSet.images must be uint8, got {images.dtype} (use detoxops.data.from_arrays or "
                "from_tensor to convert float images)"
            )
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ImageSet.images must have shape (N, H, W, 3), got {images.shape}")
        n = images.shape[0]

        self.class_names = [str(c) for c in self.class_names]
        if not self.class_names:
            raise ValueError("ImageSet.class_names must not be empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"ImageSet.class_names has duplicates: {self.class_names}")

        self.labels = _int64_vector("labels", self.labels, n)
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(self.class_names)))
        if bad.size:
            raise ValueError(
                f"ImageSet.labels out of range [0, {len(self.class_names)}): label {int(self.labels[bad[0]])} "
                f"at index {int(bad[0])} ({bad.size} bad in total)"
            )
        self.source_index = (
            np.arange(n, dtype=np.int64)
            if self.source_index is None
            else _int64_vector("source_index", self.source_index, n)
        )
        self.original_labels = (
            self.labels.copy()
            if self.original_labels is None
            else _int64_vector("original_labels", self.original_labels, n)
        )
        if self.poisoned is None:
            self.poisoned = np.zeros(n, dtype=bool)
        else:
            poisoned = np.asarray(self.poisoned)
            if poisoned.dtype != np.bool_:
                raise ValueError(f"ImageSet.poisoned must be bool, got {poisoned.dtype}")
            if poisoned.shape != (n,):
                raise ValueError(f"ImageSet.poisoned must have shape ({n},), got {poisoned.shape}")
            self.poisoned = poisoned
        if not isinstance(self.meta, dict):
            raise ValueError(f"ImageSet.meta must be a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ImageSet.meta must be JSON-serialisable: {exc}") from None

    # ------------------------------------------------------------------ basic views
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_counts(self) -> np.ndarray:
        """Number of samples per class (int64, length ``num_classes``)."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, idx: np.ndarray | list[int] | slice) -> ImageSet:
        """The samples at ``idx`` (integer indices, a boolean mask or a slice), provenance kept. Copies."""
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.dtype == np.bool_:
                if idx.shape != (len(self),):
                    raise ValueError(f"subset mask must have shape ({len(self)},), got {idx.shape}")
            elif idx.size == 0:
                idx = idx.astype(np.int64)
            elif not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"subset indices must be integers or a boolean mask, got {idx.dtype}")
            elif idx.min() < -len(self) or idx.max() >= len(self):
                raise ValueError(f"subset index out of range for {len(self)} samples")
        return ImageSet(
            images=np.array(self.images[idx], order="C"),  # always a writable in-memory copy
            labels=self.labels[idx].copy(),
            class_names=list(self.class_names),
            source_index=self.source_index[idx].copy(),
            original_labels=self.original_labels[idx].copy(),
            poisoned=self.poisoned[idx].copy(),
            meta=json.loads(json.dumps(self.meta)),
        )

    def replace(self, **fields: Any) -> ImageSet:
        """A new ``ImageSet`` with some fields replaced (validated again); e.g. ``ds.replace(images=x)``."""
        unknown = set(fields) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"ImageSet.replace: unknown field(s) {sorted(unknown)}")
        if "meta" not in fields:
            fields["meta"] = json.loads(json.dumps(self.meta))
        return dataclasses.replace(self, **fields)

    def with_transform(self, description: str | dict[str, Any]) -> ImageSet:
        """Shallow copy with ``description`` appended to ``meta["transforms"]`` (a record of what was done)."""
        meta = json.loads(json.dumps(self.meta))
        meta.setdefault("transforms", []).append(description)
        return dataclasses.replace(self, meta=meta)

    # ------------------------------------------------------------------ identity
    def content_hash(self) -> str:
        """sha256 (hex) over images, labels, class names and provenance — not ``meta``.

        Two sets with the same pixels, labels and provenance hash the same wherever they came from; the
        hash covers shapes and dtypes too, so differently shaped sets never collide by concatenation.
        """
        h = hashlib.sha256()
        header = {
            "format": FORMAT_VERSION,
            "shape": list(self.images.shape),
            "class_names": self.class_names,
        }
        h.update(json.dumps(header, sort_keys=True).encode())
        flat = np.ascontiguousarray(self.images).reshape(-1)
        for start in range(0, flat.size, _HASH_CHUNK):
            h.update(memoryview(flat[start : start + _HASH_CHUNK]))
        for name in _ARRAY_FILES[1:]:
            arr = np.ascontiguousarray(getattr(self, name))
            h.update(name.encode())
            h.update(memoryview(arr.view(np.uint8).reshape(-1)))
        return h.hexdigest()

    # ------------------------------------------------------------------ disk
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write to folder ``path`` atomically (temp folder, then ``os.replace``) and return it.

        An existing folder is an error unless ``overwrite``; even then it is only swapped out once the new
        one is completely written.
        """
        dest = Path(path)
        if dest.exists() and not overwrite:
            raise FileExistsError(f"ImageSet.save: {dest} already exists (pass overwrite=True to replace it)")
        with atomic_dir(dest, overwrite=overwrite) as tmp:
            self.write_into(tmp)
        return dest

    def write_into(self, folder: str | Path) -> None:
        """Write the arrays and ``meta.json`` into ``folder`` (created if missing) as they are, without the
        temp-folder-and-rename step of :meth:`save`: for writers that assemble several sets (and their own
        files) in one :func:`atomic_dir`, so the whole folder appears at once or not at all."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _ARRAY_FILES:
            np.save(folder / f"{name}.npy", np.ascontiguousarray(getattr(self, name)), allow_pickle=False)
        info = {
            "format": FORMAT_VERSION,
            "num_samples": len(self),
            "image_shape": list(self.image_shape),
            "class_names": self.class_names,
            "class_counts": self.class_counts().tolist(),
            "num_poisoned": int(self.poisoned.sum()),
            "content_hash": self.content_hash(),
            "meta": self.meta,
        }
        (folder / "meta.json").write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, verify: bool = False) -> ImageSet:
        """Read a folder written by :meth:`save`. ``mmap`` memory-maps ``images.npy`` read-only (instant even
        for 50k images); ``verify`` recomputes the content hash and compares it with ``meta.json``."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageSet folder not found: {folder}")
        info = read_record(folder / "meta.json", f"not an ImageSet folder (no meta.json): {folder}")
        arrays = {}
        for name in _ARRAY_FILES:
            file = folder / f"{name}.npy"
            if not file.is_file():
                raise FileNotFoundError(f"ImageSet folder {folder} is missing {file.name}")
            try:
                arrays[name] = np.load(
                    file, mmap_mode="r" if (mmap and name == "images") else None, allow_pickle=False
                )
            except (ValueError, OSError, EOFError) as exc:
                raise ValueError(f"{file}: unreadable array: {exc}") from None
        ds = cls(class_names=info["class_names"], meta=info.get("meta", {}), **arrays)
        if verify and ds.content_hash() != info.get("content_hash"):
            raise ValueError(f"{folder}: content hash does not match meta.json (files changed or corrupt)")
        return ds


def read_record(file: Path, missing: str) -> dict[str, Any]:
    """The JSON record of a stored folder (an ImageSet's ``meta.json``, a version's ``version.json``), checked:
    ``FileNotFoundError(missing)`` when absent, ``ValueError`` naming the file when corrupt or of another format."""
    if not file.is_file():
        raise FileNotFoundError(missing)
    try:
        info = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: corrupt {file.name}: {exc}") from None
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(f"{file}: format {info.get('format')!r}, this detoxops reads {FORMAT_VERSION}")
    return info


def _int64_vector(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.int64:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ImageSet.{name} must be an integer array, got {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.shape != (n,):
        raise ValueError(f"ImageSet.{name} must have shape ({n},), got {arr.shape}")
    return arr


