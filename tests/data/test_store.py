"""Dataset versions: content addressing, idempotent re-ingest, atomicity, an existing version untouched."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from detoxops.config import DataConfig
from detoxops.data import ImageSet, ingest, load_version, save_version, version_info


def cfg(tmp_path, **kw) -> DataConfig:
    return DataConfig(root=str(tmp_path / "store"), **kw)


def snapshot(folder) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ingest_layout_and_info(tmp_path, small_tree):
    version = ingest(small_tree, tmp_path / "store", cfg(tmp_path), progress=False)
    assert version.parent == tmp_path / "store" / "tree" and len(version.name) == 12
    info = version_info(version)
    assert info["hash"].startswith(version.name)
    assert list(info["splits"]) == ["train", "test"]
    assert info["splits"]["train"]["count"] == 6 and info["splits"]["train"]["class_counts"] == [3, 3]
    assert info["class_names"] == ["cat", "dog"] and info["image_shape"] == [8, 8, 3]
    assert info["source"] == str(small_tree) and info["config"]["color"] == "rgb"
    assert sorted(p.name for p in version.iterdir()) == ["test", "train", "version.json"]
    splits = load_version(version, verify=True)
    assert splits["train"].content_hash() == info["splits"]["train"]["content_hash"]


def test_reingest_same_content_returns_existing_untouched(tmp_path, small_tree, mk):
    version = ingest(small_tree, tmp_path / "store", cfg(tmp_path), progress=False)
    before = snapshot(version)
    # same pixels through another container (a zip of the same files) → same hash, same folder
    files = {str(p.relative_to(small_tree)): p.read_bytes() for p in small_tree.rglob("*.png")}
    again = ingest(
        mk.write_zip(tmp_path / "tree.zip", files), tmp_path / "store", cfg(tmp_path), progress=False
    )
    assert again == version
    assert snapshot(version) == before
    assert [p.name for p in version.parent.iterdir()] == [version.name]


def test_different_content_gets_a_new_version(tmp_path, small_tree):
    a = ingest(small_tree, tmp_path / "store", cfg(tmp_path), progress=False)
    b = ingest(small_tree, tmp_path / "store", cfg(tmp_path, image_size=4), progress=False)
    assert a != b and a.parent == b.parent


def test_failed_ingest_leaves_existing_version_untouched(tmp_path, small_tree, mk):
    version = ingest(small_tree, tmp_path / "store", cfg(tmp_path), progress=False)
    before = snapshot(tmp_path / "store")
    files = {str(p.relative_to(small_tree)): p.read_bytes() for p in small_tree.rglob("*.png")}
    files["train/cat/zz-broken.png"] = b"\x89PNG broken"
    bad = mk.write_dir(tmp_path / "bad" / "tree", files)  # same dataset name "tree"
    with pytest.raises(ValueError, match=r"zz-broken\.png: unreadable"):
        ingest(bad, tmp_path / "store", cfg(tmp_path), progress=False)
    assert snapshot(tmp_path / "store") == before
    assert load_version(version, verify=True)["train"].class_counts().tolist() == [3, 3]


def test_failure_while_writing_leaves_no_partial_version(tmp_path, monkeypatch):
    ds = ImageSet(np.zeros((4, 2, 2, 3), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"])

    def explode(self, folder):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ImageSet, "write_into", explode)
    with pytest.raises(OSError, match="disk full"):
        save_version({"train": ds, "test": ds}, tmp_path / "store", "toy", source="test")
    assert list((tmp_path / "store" / "toy").iterdir()) == []


def test_foreign_folder_at_version_path_is_not_overwritten(tmp_path):
    ds = ImageSet(np.zeros((4, 2, 2, 3), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"])
    version = save_version({"train": ds, "test": ds}, tmp_path / "store", "toy", source="test")
    info = json.loads((version / "version.json").read_text())
    info["hash"] = "0" * 64
    (version / "version.json").write_text(json.dumps(info))
    with pytest.raises(FileExistsError, match="left untouched"):
        save_version({"train": ds, "test": ds}, tmp_path / "store", "toy", source="test")
    assert json.loads((version / "version.json").read_text())["hash"] == "0" * 64


def test_bad_names_and_missing_versions(tmp_path):
    ds = ImageSet(np.zeros((2, 2, 2, 3), np.uint8), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="dataset name '../x'"):
        save_version({"train": ds}, tmp_path, "../x", source="test")
    with pytest.raises(FileNotFoundError, match="dataset version not found"):
        load_version(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="no version.json"):
        load_version(tmp_path / "plain")


def test_ingest_keeps_its_archive_cache_under_its_root(tmp_path, mk):
    archive = mk.write_tar(tmp_path / "toy.tar.gz", mk.tree_files())
    elsewhere = tmp_path / "configured-root"
    version = ingest(archive, tmp_path / "store", DataConfig(root=str(elsewhere)), progress=False)
    assert (tmp_path / "store" / ".cache").is_dir() and not elsewhere.exists()
    assert ingest(archive, tmp_path / "store", DataConfig(root=str(elsewhere)), progress=False) == version


def test_version_at_a_fixed_folder_keeps_identical_and_guards_different(tmp_path):
    """``at=`` (dvc.yaml's ingest stage): same content is kept untouched, other content needs ``overwrite``."""
    a = ImageSet(np.zeros((4, 2, 2, 3), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"])
    b = ImageSet(np.full((4, 2, 2, 3), 7, np.uint8), np.array([0, 1, 0, 1]), ["a", "b"])
    dest = tmp_path / "pipeline" / "raw"
    assert save_version({"train": a}, None, "toy", source="t", at=dest) == dest
    before = snapshot(dest)
    assert save_version({"train": a}, None, "toy", source="t", at=dest) == dest
    assert snapshot(dest) == before
    with pytest.raises(FileExistsError, match="holds other data"):
        save_version({"train": b}, None, "toy", source="t", at=dest)
    assert snapshot(dest) == before
    save_version({"train": b}, None, "toy", source="t", at=dest, overwrite=True)
    assert int(load_version(dest, verify=True)["train"].images.max()) == 7
    assert sorted(p.name for p in dest.parent.iterdir()) == ["raw"]  # no temp or old folders left
    with pytest.raises(ValueError, match="needs a root folder"):
        save_version({"train": a}, None, "toy", source="t")


def test_the_same_data_ingested_twice_is_byte_identical(tmp_path, small_tree):
    """A version folder is a pure function of its content: no creation time, so DVC gives the same data the same
    hash on every machine and in every clone (issue #28: the demo's digits got a new DVC md5 per clone)."""
    import time

    first = ingest(small_tree, tmp_path / "a", cfg(tmp_path), progress=False)
    time.sleep(1.1)  # a later second: a timestamp in the folder would differ
    second = ingest(small_tree, tmp_path / "b", cfg(tmp_path), progress=False)
    files = {k: v[0] for k, v in snapshot(first).items()}
    assert files == {k: v[0] for k, v in snapshot(second).items()} and "version.json" in files
    assert "created" not in json.loads((first / "version.json").read_text())
    assert version_info(first)["created"].endswith("Z")  # when it was written: the folder's mtime, not a field
