"""Tiny synthetic class-folder trees and archives for the data-layer tests (made in tmp_path)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(pixels)
    if mode is not None:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def random_pixels(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def tree_files(
    classes=("cat", "dog"), per_class: int = 3, splits=("train", "test"), size: int = 8
) -> dict[str, bytes]:
    """``{relative path: PNG bytes}`` of a split class-folder tree (no splits: ``splits=()``)."""
    files = {}
    seed = 0
    for split in splits or ("",):
        for cls in classes:
            for i in range(per_class):
                prefix = f"{split}/" if split else ""
                files[f"{prefix}{cls}/{i:03d}.png"] = encode(random_pixels(seed, size))
                seed += 1
    return files


def write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes], extra=None) -> Path:
    """A .tar.gz of ``files``; ``extra(tar)`` may add hostile members."""
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    return write_dir(tmp_path / "tree", tree_files())


@pytest.fixture
def mk():
    """The helpers above as one fixture (test modules cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        encode=encode,
        random_pixels=random_pixels,
        tree_files=tree_files,
        write_dir=write_dir,
        write_tar=write_tar,
        write_zip=write_zip,
    )
