"""to_tensor / from_tensor: layout, range, exact round trip, rounding policy, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detoxops.data import from_tensor, to_tensor


def test_roundtrip_is_exact_for_every_value():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = to_tensor(images)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 16, 16)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_array_equal(from_tensor(x), images)


def test_layout_nhwc_to_nchw():
    images = np.zeros((2, 3, 5, 3), dtype=np.uint8)
    images[1, 2, 4, 0] = 255
    x = to_tensor(images)
    assert x.shape == (2, 3, 3, 5) and float(x[1, 0, 2, 4]) == 1.0 and float(x.sum()) == 1.0


def test_rounding_policy_and_clipping():
    x = torch.tensor([0.4 / 255, 1.6 / 255, -0.2, 1.3]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    assert from_tensor(x)[0, :, :, 0].tolist() == [[0, 2], [0, 255]]
    assert from_tensor(x, rounding="truncate")[0, :, :, 0].tolist() == [[0, 1], [0, 255]]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="expects uint8"):
        to_tensor(np.zeros((1, 2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        from_tensor(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        from_tensor(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="rounding must be"):
        from_tensor(torch.zeros(1, 3, 2, 2), rounding="floor")


def test_memory_mapped_images_convert_without_warning(tmp_path, recwarn):
    from detoxops.data import ImageSet

    ImageSet(np.full((2, 3, 3, 3), 51, np.uint8), np.array([0, 1]), ["a", "b"]).save(tmp_path / "s")
    images = ImageSet.load(tmp_path / "s").images
    assert not images.flags.writeable
    x = to_tensor(images)
    assert torch.allclose(x, torch.full_like(x, 0.2))
    assert not [w for w in recwarn if "not writable" in str(w.message)]
