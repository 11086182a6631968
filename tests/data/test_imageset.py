"""ImageSet: validation naming the field, subset/replace, content hash, atomic save and mmap load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detoxops.data import ImageSet


def make(n=12, size=4, classes=3, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=np.arange(n) % classes,
        class_names=[f"c{i}" for i in range(classes)],
        meta={"source": "test"},
    )


def test_defaults_fill_provenance():
    ds = make()
    assert ds.labels.dtype == np.int64 and len(ds) == 12 and ds.num_classes == 3
    np.testing.assert_array_equal(ds.source_index, np.arange(12))
    np.testing.assert_array_equal(ds.original_labels, ds.labels)
    assert ds.poisoned.dtype == bool and not ds.poisoned.any()
    assert ds.class_counts().tolist() == [4, 4, 4]
    assert ds.image_shape == (4, 4, 3)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("images", np.zeros((2, 4, 4, 3), dtype=np.float32), "images must be uint8"),
        ("images", np.zeros((2, 4, 4), dtype=np.uint8), r"images must have shape \(N, H, W, 3\)"),
        ("labels", np.array([0, 5]), r"labels out of range \[0, 3\): label 5 at index 1"),
        ("labels", np.array([0.0, 1.0]), "labels must be an integer array"),
        ("labels", np.array([0, 1, 2]), r"labels must have shape \(2,\)"),
        ("poisoned", np.array([0, 1]), "poisoned must be bool"),
        ("source_index", np.array([0]), r"source_index must have shape \(2,\)"),
        ("class_names", [], "class_names must not be empty"),
        ("class_names", ["a", "a", "b"], "class_names has duplicates"),
        ("meta", {"x": object()}, "meta must be JSON-serialisable"),
    ],
)
def test_validation_names_the_field(field, value, message):
    fields = dict(
        images=np.zeros((2, 4, 4, 3), dtype=np.uint8), labels=np.array([0, 1]), class_names=["a", "b", "c"]
    )
    fields[field] = value
    with pytest.raises(ValueError, match=message):
        ImageSet(**fields)


def test_subset_keeps_provenance_and_copies():
    ds = make()
    sub = ds.subset(np.array([3, 7]))
    np.testing.assert_array_equal(sub.source_index, [3, 7])
    np.testing.assert_array_equal(sub.images, ds.images[[3, 7]])
    sub.images[0] = 0
    assert ds.images[3].any()
    mask = ds.labels == 1
    assert len(ds.subset(mask)) == 4
    with pytest.raises(ValueError, match="out of range"):
        ds.subset([12])


def test_replace_revalidates_and_keeps_meta():
    ds = make()
    poisoned = ds.replace(labels=np.zeros(12, dtype=np.int64), poisoned=np.ones(12, dtype=bool))
    assert poisoned.labels.sum() == 0 and ds.labels.sum() > 0
    np.testing.assert_array_equal(poisoned.original_labels, ds.labels)
    assert poisoned.meta == {"source": "test"}
    with pytest.raises(ValueError, match="out of range"):
        ds.replace(labels=np.full(12, 9))
    with pytest.raises(ValueError, match="unknown field"):
        ds.replace(pixels=1)


def test_content_hash_deterministic_and_sensitive():
    a, b = make(seed=1), make(seed=1)
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 64
    assert a.replace(meta={"other": 1}).content_hash() == a.content_hash()  # meta is not content
    images = a.images.copy()
    images[0, 0, 0, 0] ^= 1
    assert a.replace(images=images).content_hash() != a.content_hash()
    assert a.replace(poisoned=np.eye(1, 12, 0, dtype=bool)[0]).content_hash() != a.content_hash()
    assert a.replace(source_index=np.arange(12)[::-1].copy()).content_hash() != a.content_hash()
    renamed = a.replace(class_names=["x", "c1", "c2"])
    assert renamed.content_hash() != a.content_hash()


def test_save_load_roundtrip_mmap(tmp_path):
    ds = make().replace(poisoned=np.arange(12) % 5 == 0)
    ds.save(tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "images.npy",
        "labels.npy",
        "meta.json",
        "original_labels.npy",
        "poisoned.npy",
        "source_index.npy",
    ]
    back = ImageSet.load(tmp_path / "set", verify=True)
    assert isinstance(back.images, np.memmap)
    assert back.content_hash() == ds.content_hash()
    assert back.meta == ds.meta and back.class_names == ds.class_names
    assert json.loads((tmp_path / "set" / "meta.json").read_text())["num_poisoned"] == 3
    assert not isinstance(ImageSet.load(tmp_path / "set", mmap=False).images, np.memmap)


def test_save_is_atomic_and_refuses_overwrite(tmp_path):
    ds = make()
    ds.save(tmp_path / "set")
    with pytest.raises(FileExistsError, match="already exists"):
        make(seed=3).save(tmp_path / "set")
    assert ImageSet.load(tmp_path / "set").content_hash() == ds.content_hash()
    make(seed=3).save(tmp_path / "set", overwrite=True)
    assert ImageSet.load(tmp_path / "set").content_hash() == make(seed=3).content_hash()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temp folders left behind


def test_write_into_assembles_several_sets_in_one_atomic_folder(tmp_path):
    from detoxops.data.imageset import atomic_dir

    a, b = make(seed=1), make(seed=2)
    with pytest.raises(RuntimeError, match="interrupted"), atomic_dir(tmp_path / "both") as tmp:
        a.write_into(tmp / "a")
        raise RuntimeError("interrupted")  # a writer failing half-way leaves nothing behind
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "both") as tmp:
        a.write_into(tmp / "a")
        b.write_into(tmp / "b")
        (tmp / "extra.txt").write_text("decisions")
    assert ImageSet.load(tmp_path / "both" / "a").content_hash() == a.content_hash()
    assert ImageSet.load(tmp_path / "both" / "b").content_hash() == b.content_hash()
    assert (tmp_path / "both" / "extra.txt").read_text() == "decisions"


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageSet folder not found"):
        ImageSet.load(tmp_path / "missing")
    make().save(tmp_path / "set")
    (tmp_path / "set" / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="missing labels.npy"):
        ImageSet.load(tmp_path / "set")
    make().save(tmp_path / "set2")
    np.save(tmp_path / "set2" / "images.npy", np.zeros((12, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="content hash does not match"):
        ImageSet.load(tmp_path / "set2", verify=True)


def test_subset_of_memory_mapped_set_is_writable_copy(tmp_path):
    make().save(tmp_path / "set")
    loaded = ImageSet.load(tmp_path / "set")
    for idx in (slice(0, 4), np.array([1, 2])):
        sub = loaded.subset(idx)
        assert type(sub.images) is np.ndarray and sub.images.flags.writeable
        sub.images[:] = 0
    assert ImageSet.load(tmp_path / "set", verify=True).images.any()
