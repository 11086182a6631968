"""Seeded initialisation stays deterministic when tasks build networks in parallel threads (Prefect's default
task runner): every thread gets exactly the weights a sequential build gives for its seed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from detoxops.models import build_classifier
from detoxops.seeding import seed_global, seeded


def _weights(seed: int) -> torch.Tensor:
    model = build_classifier("small_cnn", 10, image_size=16, seed=seed, width=8)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_parallel_builds_match_sequential_ones():
    seeds = [0, 1, 2, 3] * 6
    expected = {s: _weights(s) for s in set(seeds)}
    with ThreadPoolExecutor(max_workers=6) as pool:
        # other threads reseed the global generator meanwhile, as a training loop's seed_global does
        jobs = [pool.submit(_weights, s) for s in seeds] + [pool.submit(seed_global, 99) for _ in range(12)]
        got = [j.result() for j in jobs[: len(seeds)]]
    for s, w in zip(seeds, got, strict=True):
        assert torch.equal(w, expected[s]), f"seed {s}: weights differ from the sequential build"


def test_seeded_restores_the_global_generator():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with seeded(7):
        a = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded(7):
        assert torch.equal(torch.rand(3), a)
