"""DataElixir's resumable work folders: keyed by what determines their content, so a re-run after a failure or a
change just works, a damaged shard is recomputed, stale folders are cleaned, and resume still works."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from detoxops.config import DataElixirConfig, ScheduleConfig, UNetConfig, VictimConfig
from detoxops.data import ImageSet
from detoxops.defenses import dataelixir as de
from detoxops.defenses.elixir.shards import (
    DamagedShardError,
    ShardStore,
    clean_stale,
    fingerprint_key,
    open_work_store,
)
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet
from detoxops.models import build_classifier


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    labels = np.tile(np.arange(3), 8).astype(np.int64)
    train = ImageSet(images=images, labels=labels, class_names=["a", "b", "c"])
    unet = build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16]))
    purifier = Purifier(unet, NoiseSchedule.from_config(ScheduleConfig()))
    victim = build_classifier("small_cnn", 3, image_size=8, width=4).eval()
    cfg = DataElixirConfig(T=6, rounds=2, keep_last=3, tau=2, shard_size=10, batch_size=8)
    return train, purifier, victim, cfg


def counting(monkeypatch):
    calls = {"n": 0}
    real = de.build_candidates

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(de, "build_candidates", wrapped)
    return calls


def crash_after(monkeypatch, n_ok: int):
    real = de.build_candidates
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(de, "build_candidates", crashing)


def test_a_rerun_with_other_settings_after_a_failure_just_works(setup, tmp_path, monkeypatch):
    """The issue's case 2: a failed run's shards no longer block a run with changed data / params / models."""
    train, purifier, victim, cfg = setup
    crash_after(monkeypatch, 2)  # shard 0 (2 batches) finished, then the run dies
    with pytest.raises(RuntimeError, match="killed"):
        de.DataElixir(purifier, cfg).candidate_sets(train, victim, tmp_path, progress=False)
    monkeypatch.undo()
    changed = cfg.model_copy(update={"T": 5})
    out = de.DataElixir(purifier, changed).candidate_sets(train, victim, tmp_path, progress=False)
    assert out["labels"].shape == (24, 6)
    other_victim = build_classifier("small_cnn", 3, image_size=8, width=4, seed=1).eval()
    de.DataElixir(purifier, cfg).candidate_sets(train, other_victim, tmp_path, progress=False)
    assert len(list((tmp_path / "candidates").iterdir())) == 3  # one keyed folder per fingerprint


def test_an_unchanged_rerun_resumes_without_recomputing(setup, tmp_path, monkeypatch):
    train, purifier, victim, cfg = setup
    full = de.DataElixir(purifier, cfg).candidate_sets(train, victim, tmp_path / "full", progress=False)
    crash_after(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        de.DataElixir(purifier, cfg).candidate_sets(train, victim, tmp_path / "run", progress=False)
    monkeypatch.undo()
    calls = counting(monkeypatch)
    resumed = de.DataElixir(purifier, cfg).candidate_sets(train, victim, tmp_path / "run", progress=False)
    assert calls["n"] == 3  # shards 1 and 2 only (2 + 1 batches); shard 0 came from disk
    for key in full:
        assert np.array_equal(full[key], resumed[key]), key
    calls["n"] = 0
    de.DataElixir(purifier, cfg).candidate_sets(train, victim, tmp_path / "run", progress=False)
    assert calls["n"] == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_rows"])
def test_a_damaged_shard_is_detected_and_recomputed(setup, tmp_path, monkeypatch, caplog, damage):
    train, purifier, victim, cfg = setup
    elixir = de.DataElixir(purifier, cfg)
    full = elixir.candidate_sets(train, victim, tmp_path, progress=False)
    (shard,) = (tmp_path / "candidates").glob("*/shard-00001.npz")
    if damage == "truncate":  # a write cut short (the BadZipFile)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "garbage":
        shard.write_bytes(b"not a zip file at all")
    else:
        np.savez(shard, labels=np.zeros((3, 6)), distances=np.zeros((3, 6)), selected=np.zeros(3),
                 images=np.zeros((3, 8, 8, 3), np.uint8))
    calls = counting(monkeypatch)
    with caplog.at_level("WARNING", logger="detoxops.defenses.dataelixir"):
        again = elixir.candidate_sets(train, victim, tmp_path, progress=False)
    assert calls["n"] == 2  # shard 1 (10 images, batch 8) only
    assert any(str(shard) in r.getMessage() and "damaged shard" in r.getMessage() for r in caplog.records)
    for key in full:
        assert np.array_equal(full[key], again[key]), key


def test_load_names_the_damaged_file(tmp_path):
    store = ShardStore(tmp_path, {"data": "a"})
    store.save(0, labels=np.arange(3))
    store.path(0).write_bytes(b"PK\x03\x04broken")
    with pytest.raises(DamagedShardError, match="shard-00000.npz: damaged shard"):
        store.load(0)
    store.save(1, labels=np.arange(3))
    with pytest.raises(DamagedShardError, match="expected 4"):
        store.load(1, length=4)


def test_the_refusal_message_says_what_to_delete(tmp_path):
    ShardStore(tmp_path, {"data": "a"})
    with pytest.raises(ValueError, match=f"different run.*delete {tmp_path}"):
        ShardStore(tmp_path, {"data": "b"})


def _age(folder, seconds):
    then = time.time() - seconds
    os.utime(folder / "fingerprint.json", (then, then))


def test_stale_work_folders_are_cleaned_and_busy_ones_kept(tmp_path):
    root = tmp_path / "candidates"
    stores = {name: open_work_store(root, {"run": name}) for name in "abcde"}
    for name, hours in zip("abcde", (30, 2, 1, 0.5, 0), strict=True):
        _age(stores[name].folder, hours * 3600)
    (root / "shard-00000.npz").write_bytes(b"old unkeyed layout")
    (root / "fingerprint.json").write_text("{}")
    removed = clean_stale(root, keep=fingerprint_key({"run": "e"}))
    names = {p.name for p in removed}
    # a: unused for over a day; b: beyond the 3 most recent (e kept, c, d); legacy unkeyed files
    assert names == {stores["a"].folder.name, stores["b"].folder.name, "shard-00000.npz", "fingerprint.json"}
    assert sorted(p.name for p in root.iterdir()) == sorted(stores[n].folder.name for n in "cde")
    # a folder used within the last minutes is never removed, however many there are
    fresh = [open_work_store(root, {"run": f"new{i}"}) for i in range(5)]
    assert all(s.folder.is_dir() for s in fresh)


def test_partial_writes_of_a_killed_run_are_removed(tmp_path):
    store = ShardStore(tmp_path, {"data": "a"})
    leftover = tmp_path / ".shard-00003.deadbeef.npz"
    leftover.write_bytes(b"half")
    recent = tmp_path / ".shard-00004.cafecafe.npz"
    recent.write_bytes(b"being written")
    then = time.time() - 3600
    os.utime(leftover, (then, then))
    ShardStore(tmp_path, {"data": "a"})
    assert not leftover.exists() and recent.exists() and store.folder.is_dir()


def test_sanitize_end_to_end_still_resumes_in_keyed_folders(setup, tmp_path):
    train, purifier, victim, cfg = setup
    res = de.DataElixir(purifier, cfg, VictimConfig(epochs=1, batch_size=8)).sanitize(
        train, victim, tmp_path, progress=False)
    (folder,) = (tmp_path / "candidates").iterdir()
    assert len(folder.name) == 16 and sorted(p.name for p in folder.glob("shard-*")) == [
        "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert len(res.flagged) == 24


def test_progress_moves_within_a_batch(setup, tmp_path):
    """One batch can be the whole dataset: the bar counts denoising steps, so its ETA is live before the batch ends."""
    from detoxops.progress import report_progress

    train, purifier, victim, cfg = setup
    one_batch = cfg.model_copy(update={"shard_size": 64, "batch_size": 64})
    lines: list[str] = []
    with report_progress(lines.append, interval=0.0):
        de.DataElixir(purifier, one_batch).candidate_sets(train, victim, tmp_path, progress=False)
    steps = one_batch.rounds * 6  # DDPM from T = 6: 6 steps a round
    assert lines[0].startswith(f"DataElixir candidates (24 img x {steps} denoising steps): 0/{24 * steps} step")
    partial = [line for line in lines if f"/{24 * steps} step" in line and " 0/" not in line
               and f" {24 * steps}/" not in line]
    assert len(partial) >= steps - 1 and all("ETA" in line for line in partial)
