"""Session-wide test settings: keep every run hermetic and off the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """The shared CIFAR-10 JPEG archive (tests that need it skip where it is absent)."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    return CIFAR_ARCHIVE


@pytest.fixture
def purification_counter(monkeypatch) -> dict:
    """Counts the images DataElixir sends through the diffusion model (stage 1's expensive half:
    ``purify_candidates`` as ``detoxops.defenses.dataelixir`` calls it)."""
    from detoxops.defenses import dataelixir as de

    calls = {"images": 0}
    real = de.purify_candidates

    def counting(purifier, x01, *args, **kwargs):
        calls["images"] += len(x01)
        return real(purifier, x01, *args, **kwargs)

    monkeypatch.setattr(de, "purify_candidates", counting)
    return calls
