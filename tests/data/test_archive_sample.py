"""read_per_class: the first N images per class of one split, sorted by class, without reading the rest."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from detoxops.data.archive_sample import read_per_class


def _archive(tmp_path):
    path = tmp_path / "tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for i in range(3):
                for cls, value in (("b", 200), ("a", 100)):  # class b first in archive order
                    buf = io.BytesIO()
                    Image.fromarray(np.full((4, 4, 3), value + i, np.uint8)).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{split}/{cls}/{i}.png")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
        info = tarfile.TarInfo("test/a/../../evil.png")  # not <split>/<class>/<file>: skipped
        info.size = 0
        tf.addfile(info, io.BytesIO(b""))
    return path


def test_first_n_per_class_sorted_by_class(tmp_path):
    x, y = read_per_class(_archive(tmp_path), "test", 2, classes=("a", "b"))
    assert x.shape == (4, 4, 4, 3) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 1, 1]
    assert x[:, 0, 0, 0].tolist() == [100, 101, 200, 201]


def test_missing_split_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no val images"):
        read_per_class(_archive(tmp_path), "val", 2, classes=("a", "b"))
