"""Sources: digits, numpy arrays / .npz, stored versions, the archive cache, torchvision without network."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from detoxops.config import DataConfig
from detoxops.data import SourceUnavailableError, from_arrays, ingest, load_source, source_name


def cfg(tmp_path, **kw) -> DataConfig:
    return DataConfig(root=str(tmp_path / "store"), **kw)


def test_digits_offline_resized_rgb_split(tmp_path):
    splits = load_source("digits", cfg(tmp_path, image_size=16), progress=False)
    train, test = splits["train"], splits["test"]
    assert len(train) + len(test) == 1797
    assert train.image_shape == (16, 16, 3) and train.images.dtype == np.uint8
    assert train.class_names == [str(i) for i in range(10)]
    assert 0.19 < len(test) / 1797 < 0.21
    assert set(train.source_index).isdisjoint(test.source_index)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 1])
    again = load_source("digits", cfg(tmp_path, image_size=16), progress=False)
    assert again["train"].content_hash() == train.content_hash()
    other = load_source("digits", cfg(tmp_path, image_size=16, seed=1), progress=False)
    assert other["train"].content_hash() != train.content_hash()


def test_digits_native_size_values(tmp_path):
    from sklearn.datasets import load_digits

    splits = load_source("digits", cfg(tmp_path, image_size=None), progress=False)
    train = splits["train"]
    assert train.image_shape == (8, 8, 3)
    raw = load_digits().images[train.source_index[:5]]
    np.testing.assert_array_equal(train.images[:5, :, :, 0], np.round(raw * 255 / 16).astype(np.uint8))


def test_from_arrays_conversions():
    gray_float = np.linspace(0, 1, 2 * 4 * 4).reshape(2, 4, 4)
    ds = from_arrays(gray_float, np.array([1, 0]))
    assert ds.class_names == ["0", "1"] and ds.image_shape == (4, 4, 3)
    assert ds.images[1, 3, 3, 2] == 255 and ds.images[0, 0, 0, 0] == 0
    rgba = np.full((3, 5, 5, 4), 7, dtype=np.int32)
    ds = from_arrays(rgba, np.array([0, 1, 2], dtype=np.int32), ["x", "y", "z"], image_size=3)
    assert ds.image_shape == (3, 3, 3) and ds.labels.dtype == np.int64 and int(ds.images.max()) == 7


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8),
        train_labels=np.arange(20) % 2,
        test_images=rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8),
        test_labels=np.array([0, 1, 0, 1]),
        class_names=np.array(["no", "yes"]),
    )
    splits = load_source(path, cfg(tmp_path), progress=False)
    assert len(splits["train"]) == 20 and splits["test"].class_names == ["no", "yes"]
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((2, 6, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="missing array 'train_labels'"):
        load_source(tmp_path / "bad.npz", cfg(tmp_path), progress=False)
    np.savez(tmp_path / "nan.npz", images=np.full((4, 2, 2, 3), np.nan), labels=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"nan\.npz: all: images contain 48 NaN/inf"):
        load_source(tmp_path / "nan.npz", cfg(tmp_path), progress=False)


def test_stored_version_is_a_source_and_resizes(tmp_path, small_tree):
    version = ingest(small_tree, tmp_path / "store", cfg(tmp_path), progress=False)
    loaded = load_source(version, cfg(tmp_path), progress=False)
    assert isinstance(loaded["train"].images, np.memmap)
    original = load_source(small_tree, cfg(tmp_path), progress=False)
    assert loaded["train"].content_hash() == original["train"].content_hash()
    smaller = load_source(version, cfg(tmp_path, image_size=4, train_per_class=1), progress=False)
    assert smaller["train"].image_shape == (4, 4, 3) and len(smaller["train"]) == 2


def test_archive_cache_reused(tmp_path, mk):
    archive = mk.write_tar(tmp_path / "toy.tar.gz", mk.tree_files())
    first = load_source(archive, cfg(tmp_path), progress=False)
    cached = list((tmp_path / "store" / ".cache").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("toy-")
    second = load_source(archive, cfg(tmp_path), progress=False)
    assert isinstance(second["train"].images, np.memmap)
    assert second["train"].content_hash() == first["train"].content_hash()
    load_source(archive, cfg(tmp_path, image_size=4), progress=False)  # another policy → another cache entry
    assert len(list((tmp_path / "store" / ".cache").iterdir())) == 2


def test_source_names(tmp_path):
    assert source_name("digits") == "digits"
    assert source_name("/x/cifar10-jpeg.tar.gz") == "cifar10-jpeg"
    assert source_name("/x/My Data.zip") == "My-Data"


@pytest.mark.parametrize("name, label", [("cifar10", "CIFAR-10"), ("gtsrb", "GTSRB")])
def test_torchvision_without_network_is_a_clear_error(tmp_path, monkeypatch, name, label):
    def blocked(*args, **kwargs):
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(socket.socket, "connect", blocked)
    with pytest.raises(
        SourceUnavailableError,
        match=rf"cannot download {label} via torchvision .*network blocked by test.*network is probably unreachable",
    ):
        load_source(name, cfg(tmp_path), progress=False)
