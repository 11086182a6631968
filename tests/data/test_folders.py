"""Class-folder trees from directories, .tar.gz and .zip: layout, class names, order, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detoxops.config import DataConfig
from detoxops.data import load_source


def cfg(tmp_path, **kw) -> DataConfig:
    return DataConfig(root=str(tmp_path / "store"), **kw)


def test_split_tree_directory(tmp_path, small_tree):
    splits = load_source(small_tree, cfg(tmp_path), progress=False)
    assert set(splits) == {"train", "test"}
    train = splits["train"]
    assert train.class_names == ["cat", "dog"] and len(train) == 6 and train.image_shape == (8, 8, 3)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    decoded = np.asarray(Image.open(small_tree / "train" / "dog" / "001.png"))
    np.testing.assert_array_equal(
        train.images[4], decoded
    )  # PNG is lossless: exact pixels, (class, path) order
    assert train.meta["split"] == "train" and train.meta["source"] == str(small_tree)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archives_match_directory(tmp_path, mk, kind):
    files = mk.tree_files(classes=("b", "a", "c"), per_class=2)
    directory = load_source(mk.write_dir(tmp_path / "d", files), cfg(tmp_path), progress=False)
    # reversed member order and a wrapper folder must not change the result
    wrapped = {f"wrap/{k}": v for k, v in reversed(list(files.items()))}
    archive = (
        mk.write_tar(tmp_path / "x.tar.gz", wrapped)
        if kind == "tar"
        else mk.write_zip(tmp_path / "x.zip", wrapped)
    )
    packed = load_source(archive, cfg(tmp_path), progress=False, cache=False)
    for split in ("train", "test"):
        assert packed[split].class_names == ["a", "b", "c"]
        assert packed[split].content_hash() == directory[split].content_hash()


def test_single_tree_is_split_stratified(tmp_path, mk):
    root = mk.write_dir(tmp_path / "flat", mk.tree_files(per_class=10, splits=()))
    splits = load_source(root, cfg(tmp_path, test_fraction=0.3), progress=False)
    assert splits["train"].class_counts().tolist() == [7, 7]
    assert splits["test"].class_counts().tolist() == [3, 3]
    assert set(splits["train"].source_index).isdisjoint(splits["test"].source_index)


def test_resize_and_color_policy(tmp_path, mk):
    files = {
        "train/a/0.png": mk.encode(mk.random_pixels(0, 8)),
        "train/a/1.png": mk.encode(mk.random_pixels(1, 12), mode="L"),  # grayscale
        "train/b/0.png": mk.encode(mk.random_pixels(2, 6), mode="RGBA"),
        "train/b/1.gif": mk.encode(mk.random_pixels(3, 8), fmt="GIF"),  # palette
        "test/a/0.png": mk.encode(mk.random_pixels(4, 8)),
        "test/b/0.png": mk.encode(mk.random_pixels(5, 8)),
        "train/README.txt": b"not an image",
    }
    splits = load_source(mk.write_dir(tmp_path / "t", files), cfg(tmp_path, image_size=5), progress=False)
    assert splits["train"].image_shape == (5, 5, 3) and len(splits["train"]) == 4
    gray = splits["train"].images[1]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grayscale became equal RGB channels
    assert splits["train"].meta["skipped_files"] == 1


def test_subsetting_from_config(tmp_path, mk):
    root = mk.write_dir(tmp_path / "t", mk.tree_files(per_class=5))
    splits = load_source(root, cfg(tmp_path, train_per_class=2, test_per_class=1, seed=3), progress=False)
    assert splits["train"].class_counts().tolist() == [2, 2]
    assert splits["test"].class_counts().tolist() == [1, 1]
    again = load_source(root, cfg(tmp_path, train_per_class=2, test_per_class=1, seed=3), progress=False)
    np.testing.assert_array_equal(splits["train"].source_index, again["train"].source_index)
