"""The shared CIFAR-10 JPEG archive: 50,000 / 10,000 images, 10 folder-named classes, a reproducible hash."""

from __future__ import annotations

import io
import shutil
import tarfile
import time

import numpy as np
from PIL import Image

from detoxops.config import DataConfig
from detoxops.data import ingest, load_source, load_version, version_info

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _slice(archive, dest, classes=("cat", "ship"), per_split_class=15):
    """A small .tar.gz with the first members of two classes of the real archive (one streaming pass)."""
    wanted = {(s, c): per_split_class for s in ("train", "test") for c in classes}
    files = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            key = tuple(parts[:2])
            if member.isfile() and wanted.get(key, 0) > 0:
                files[member.name] = tar.extractfile(member).read()
                wanted[key] -= 1
            if not any(wanted.values()):
                break
    with tarfile.open(dest, "w:gz") as out:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dest, files


def test_cifar_slice_ingest_is_reproducible(cifar_archive, tmp_path):
    path, files = _slice(cifar_archive, tmp_path / "cifar-slice.tar.gz")
    cfg = DataConfig(root=str(tmp_path / "a"), image_size=None)
    first = ingest(path, tmp_path / "a", cfg, progress=False)
    second = ingest(
        path, tmp_path / "b", DataConfig(root=str(tmp_path / "b"), image_size=None), progress=False
    )
    assert version_info(first)["hash"] == version_info(second)["hash"]
    splits = load_version(first)
    assert splits["train"].class_names == ["cat", "ship"]
    assert splits["train"].class_counts().tolist() == [15, 15]
    assert splits["test"].class_counts().tolist() == [15, 15]
    assert splits["train"].image_shape == (32, 32, 3)
    # the first ship image by path is index 15 in (class, path) order, decoded exactly as PIL decodes it
    name = sorted(n for n in files if n.startswith("train/ship/"))[0]
    np.testing.assert_array_equal(splits["train"].images[15], np.asarray(Image.open(io.BytesIO(files[name]))))


def test_full_cifar_archive(cifar_archive, tmp_path):
    """Two independent decodes of all 60k JPEGs: ~25 s on the 2-core CPU (under 60 s, so in the default run)."""
    start = time.perf_counter()
    first = ingest(
        cifar_archive, tmp_path / "a", DataConfig(root=str(tmp_path / "a"), image_size=None), progress=False
    )
    seconds = time.perf_counter() - start
    info = version_info(first)
    assert info["splits"]["train"]["count"] == 50_000 and info["splits"]["test"]["count"] == 10_000
    assert info["class_names"] == CIFAR_CLASSES
    assert info["splits"]["train"]["class_counts"] == [5000] * 10
    assert info["splits"]["test"]["class_counts"] == [1000] * 10
    assert info["image_shape"] == [32, 32, 3]
    # a second, independent decode (fresh root, no cache) must give the same content hash
    second = ingest(
        cifar_archive,
        tmp_path / "b",
        DataConfig(root=str(tmp_path / "b"), image_size=None),
        progress=False,
        cache=False,
    )
    assert version_info(second)["hash"] == info["hash"]
    # the stored version opens instantly (memory-mapped)
    start = time.perf_counter()
    splits = load_source(first, DataConfig(root=str(tmp_path / "a"), image_size=None), progress=False)
    assert isinstance(splits["train"].images, np.memmap) and time.perf_counter() - start < 2.0
    print(f"first ingest {seconds:.1f} s")
    del splits
    for folder in ("a", "b"):  # ~550 MB of arrays: do not keep them in pytest's retained temp folders
        shutil.rmtree(tmp_path / folder)
