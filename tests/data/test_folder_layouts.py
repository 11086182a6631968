"""Folder layouts a user's dataset comes in: the recognised split names are in every layout error, an unknown
split layout lists what was found, and an inconsistent tree names two different paths (issue #24, case 4)."""

from __future__ import annotations

import pytest

from detoxops.config import DataConfig
from detoxops.data import load_source
from detoxops.data.folders import SPLIT_NAMES

from .conftest import tree_files, write_dir


def test_train_test_clean_test_triggered_lists_what_was_found(tmp_path):
    """The issue's layout: train/, test_clean/, test_triggered/ (it used to name the same path twice)."""
    files = {**tree_files(splits=("train",), per_class=3),
             **{k.replace("train/", "test_clean/"): v for k, v in tree_files(splits=("train",), per_class=2).items()},
             **{k.replace("train/", "test_triggered/"): v for k, v in tree_files(classes=("cat",), splits=("train",),
                                                                                   per_class=1).items()}}
    root = write_dir(tmp_path / "signs", files)
    with pytest.raises(ValueError) as info:
        load_source(root, DataConfig(image_size=None), progress=False)
    message = str(info.value)
    assert "split folders not recognised: 'test_clean', 'test_triggered'" in message
    assert "train/ (6 images)" in message and "test_clean/ (4 images)" in message
    assert "test_triggered/ (1 images)" in message
    assert "Recognised split names: train, test, val (train required)" in message
    assert "--split test" in message


def test_unknown_split_names_below_a_wrapper_folder(tmp_path):
    files = {f"mydata/{k.replace('train/', 'training/').replace('test/', 'testing/')}": v
             for k, v in tree_files().items()}
    root = write_dir(tmp_path / "wrapped", files)
    with pytest.raises(ValueError, match=r"not recognised: 'testing', 'training'\. Found mydata/testing/ "
                                         r"\(6 images\), mydata/training/ \(6 images\)"):
        load_source(root, DataConfig(image_size=None), progress=False)


def test_inconsistent_depths_name_two_different_paths_and_the_layouts(tmp_path):
    files = {"cat/a.png": tree_files()["train/cat/000.png"], "dog/deeper/b.png": tree_files()["train/dog/000.png"],
             "dog/c.png": tree_files()["train/dog/001.png"]}
    root = write_dir(tmp_path / "mixed", files)
    with pytest.raises(ValueError) as info:
        load_source(root, DataConfig(image_size=None), progress=False)
    message = str(info.value)
    assert "2 different folder depths (e.g. 'cat/a.png' and 'dog/deeper/b.png')" in message
    assert f"<split> one of {', '.join(SPLIT_NAMES)}" in message


def test_a_split_layout_without_train_says_which_names_are_recognised(tmp_path):
    files = {k.replace("train/", "val/"): v for k, v in tree_files().items()}
    root = write_dir(tmp_path / "notrain", files)
    with pytest.raises(ValueError, match=r"without a train/ folder \(found test/, val/\); recognised split names: "
                                         r"train, test, val"):
        load_source(root, DataConfig(image_size=None), progress=False)


def test_recognised_layouts_still_load(tmp_path):
    root = write_dir(tmp_path / "ok", tree_files(splits=("train", "test", "val")))
    splits = load_source(root, DataConfig(image_size=None), progress=False)
    assert sorted(splits) == ["test", "train", "val"] and len(splits["train"]) == 6
