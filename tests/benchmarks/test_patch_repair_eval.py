"""benchmarks/patch_repair_eval.py: the stored context maps stand in for the computed ones, found by image content
through the defense's diffusion-space round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import patch_repair_eval as bench  # noqa: E402


def test_map_lookup_returns_each_images_stored_map_in_batch_order():
    from detoxops.data import to_tensor

    rng = np.random.default_rng(0)
    clean, triggered = (rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    clean_maps, trig_maps = rng.random((3, 8, 8)), rng.random((3, 8, 8))
    lookup = bench.MapLookup([clean, triggered], [clean_maps, trig_maps])
    batch = np.stack([triggered[2], clean[0], triggered[0]])
    got = lookup(to_tensor(batch) * 2 - 1, torch.Generator())
    assert got.shape == (3, 1, 8, 8) and got.dtype == torch.float32
    np.testing.assert_allclose(got[:, 0].numpy(), np.stack([trig_maps[2], clean_maps[0], trig_maps[0]]), rtol=1e-6)
    with pytest.raises(SystemExit, match="without a stored context map"):
        lookup(to_tensor(255 - batch) * 2 - 1, torch.Generator())
