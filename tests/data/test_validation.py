"""Every bad input gets an error that names the problem (and, where there is one, the file)."""

from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest

from detoxops.config import DataConfig
from detoxops.data import from_arrays, load_source


def load(path, tmp_path, **kw):
    return load_source(path, DataConfig(root=str(tmp_path / "store"), **kw), progress=False, cache=False)


def _half_a_jpeg(mk) -> bytes:
    good = mk.encode(mk.random_pixels(9, 32), fmt="JPEG")
    return good[: len(good) // 2]


@pytest.mark.parametrize(
    "bad_file, content, container",
    [
        ("train/dog/bad.png", lambda mk: b"\x89PNG\r\n\x1a\n garbage", "dir"),  # corrupt
        ("test/cat/cut.jpg", _half_a_jpeg, "tar.gz"),  # truncated
        ("train/cat/empty.jpg", lambda mk: b"", "zip"),  # empty
    ],
)
def test_an_unreadable_image_names_the_file(tmp_path, mk, bad_file, content, container):
    files = mk.tree_files(size=32)
    files[bad_file] = content(mk)
    write = {"dir": mk.write_dir, "tar.gz": mk.write_tar, "zip": mk.write_zip}[container]
    source = write(tmp_path / ("t" if container == "dir" else f"t.{container}"), files)
    with pytest.raises(ValueError, match=bad_file.replace(".", r"\.") + ": unreadable, corrupt or truncated image"):
        load(source, tmp_path)


def test_mixed_sizes_without_resize_policy(tmp_path, mk):
    files = mk.tree_files()
    files["train/cat/big.png"] = mk.encode(mk.random_pixels(0, 10))
    with pytest.raises(
        ValueError, match=r"mixed image sizes .*10x10 in train/cat/big\.png.*set data\.image_size"
    ):
        load(mk.write_dir(tmp_path / "t", files), tmp_path, image_size=None)
    assert load(tmp_path / "t", tmp_path, image_size=8)["train"].image_shape == (8, 8, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_under_keep_is_an_error(tmp_path, mk, mode):
    files = mk.tree_files()
    files["train/cat/odd.png"] = mk.encode(mk.random_pixels(0), mode=mode)
    with pytest.raises(
        ValueError, match=rf"train/cat/odd\.png: image mode {mode} is not RGB and data\.color is 'keep'"
    ):
        load(mk.write_dir(tmp_path / "t", files), tmp_path, color="keep")
    assert len(load(tmp_path / "t", tmp_path, color="rgb")["train"]) == 7


def test_empty_class_folder(tmp_path, mk):
    root = mk.write_dir(tmp_path / "t", mk.tree_files())
    (root / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match=r"empty class folder 'train/emu'"):
        load(root, tmp_path)


def test_empty_class_folder_in_archive(tmp_path, mk):
    def add_empty_dir(tar):
        info = tarfile.TarInfo("test/emu")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)

    with pytest.raises(ValueError, match=r"empty class folder 'test/emu'"):
        load(mk.write_tar(tmp_path / "t.tar.gz", mk.tree_files(), extra=add_empty_dir), tmp_path)


def test_class_missing_from_one_split(tmp_path, mk):
    files = {k: v for k, v in mk.tree_files().items() if not k.startswith("test/dog")}
    with pytest.raises(ValueError, match=r"class 'dog' has no images in split 'test'"):
        load(mk.write_dir(tmp_path / "t", files), tmp_path)


def test_no_images_and_loose_images(tmp_path, mk):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load(tmp_path / "empty", tmp_path)
    files = mk.tree_files(splits=())
    files["loose.png"] = mk.encode(mk.random_pixels(0))
    with pytest.raises(ValueError, match=r"'loose\.png' is not inside a class folder"):
        load(mk.write_dir(tmp_path / "l", files), tmp_path)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data source not found: .*nope\.tar\.gz"):
        load(tmp_path / "nope.tar.gz", tmp_path)
    with pytest.raises(ValueError, match="unknown data source 'mnistt'"):
        load("mnistt", tmp_path)


# ------------------------------------------------------------------------------ hostile archives
def _tar_with(tmp_path, mk, add):
    return mk.write_tar(tmp_path / "evil.tar.gz", mk.tree_files(), extra=add)


def _add_file(name):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))

    return add


def _add_link(name, target, kind):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)

    return add


@pytest.mark.parametrize(
    "add, message",
    [
        (_add_file("../escape.png"), r"'\.\./escape\.png' contains '\.\.' \(would escape the target folder"),
        (_add_file("train/cat/../../../x.png"), "would escape the target folder"),
        (_add_file("/etc/evil.png"), r"'/etc/evil\.png' has an absolute path"),
        (
            _add_link("train/cat/link.png", "/etc/passwd", tarfile.SYMTYPE),
            "is a symbolic link to '/etc/passwd'",
        ),
        (_add_link("train/cat/hard.png", "train/cat/000.png", tarfile.LNKTYPE), "is a hard link"),
    ],
)
def test_tar_members_escaping_the_folder(tmp_path, mk, add, message):
    with pytest.raises(ValueError, match=message):
        load(_tar_with(tmp_path, mk, add), tmp_path)
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize(
    "name", ["../../zip-slip.png", "/abs/evil.png", "C:/windows/evil.png", "..\\win.png"]
)
def test_zip_slip(tmp_path, mk, name):
    path = mk.write_zip(tmp_path / "evil.zip", {**mk.tree_files(), name: b"x"})
    with pytest.raises(ValueError, match="would escape the target folder"):
        load(path, tmp_path)


def test_zip_symlink_member(tmp_path, mk):
    path = mk.write_zip(tmp_path / "evil.zip", mk.tree_files())
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("train/cat/link.png")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="is a symbolic link"):
        load(path, tmp_path)


def test_symlink_outside_directory_tree(tmp_path, mk):
    root = mk.write_dir(tmp_path / "t", mk.tree_files())
    outside = tmp_path / "outside.png"
    outside.write_bytes(mk.encode(mk.random_pixels(0)))
    (root / "train" / "cat" / "link.png").symlink_to(outside)
    with pytest.raises(ValueError, match="symlink points outside the dataset folder"):
        load(root, tmp_path)


def test_corrupt_and_truncated_archives(tmp_path, mk):
    good = mk.write_tar(tmp_path / "g.tar.gz", mk.tree_files()).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut\.tar\.gz: corrupt or truncated archive"):
        load(tmp_path / "cut.tar.gz", tmp_path)
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match=r"junk\.zip: not a readable zip archive"):
        load(tmp_path / "junk.zip", tmp_path)


# ------------------------------------------------------------------------------------ arrays
def test_arrays_nan_inf():
    images = np.zeros((4, 2, 2, 3), dtype=np.float32)
    images[2, 1, 0, 1] = np.nan
    images[3, 0, 0, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"images contain 2 NaN/inf value\(s\), first at index \(2, 1, 0, 1\)"
    ):
        from_arrays(images, np.zeros(4, dtype=np.int64), ["a"])
    with pytest.raises(ValueError, match=r"labels contain 1 NaN/inf"):
        from_arrays(np.zeros((2, 2, 2, 3), np.uint8), np.array([0.0, np.nan]), ["a"])


def test_arrays_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels out of range \[0, 2\): label 2 at index 1"):
        from_arrays(np.zeros((3, 2, 2, 3), np.uint8), np.array([1, 2, -1]), ["a", "b"])
    with pytest.raises(ValueError, match="labels must be integers"):
        from_arrays(np.zeros((2, 2, 2, 3), np.uint8), np.array([0.0, 1.0]), ["a", "b"])


def test_arrays_value_ranges_and_layout():
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], found range \[255, 255\]"):
        from_arrays(np.full((1, 2, 2, 3), 255.0), np.array([0]), ["a"])
    with pytest.raises(ValueError, match=r"integer images must lie in \[0, 255\], found range \[300, 300\]"):
        from_arrays(np.full((1, 2, 2, 3), 300), np.array([0]), ["a"])
    with pytest.raises(ValueError, match="looks like NCHW"):
        from_arrays(np.zeros((1, 3, 8, 8), np.uint8), np.array([0]), ["a"])
    with pytest.raises(ValueError, match="data.color is 'keep'"):
        from_arrays(np.zeros((1, 4, 4), np.uint8), np.array([0]), ["a"], color="keep")


def test_truncated_jpeg_fails_even_if_pil_was_relaxed(tmp_path, mk, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    files = mk.tree_files(size=32)
    good = mk.encode(mk.random_pixels(9, 32), fmt="JPEG")
    files["train/cat/cut.jpg"] = good[: int(len(good) * 0.8)]
    with pytest.raises(ValueError, match=r"train/cat/cut\.jpg: unreadable, corrupt or truncated image"):
        load(mk.write_dir(tmp_path / "t", files), tmp_path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
