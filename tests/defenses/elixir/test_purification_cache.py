"""``dataelixir.noise: per_image``: purified candidates keyed by image content, stored once and shared by every
dataset, shard layout and victim that meets the same image."""

import numpy as np
import pytest
import torch

from detoxops.config import DataElixirConfig, ScheduleConfig, UNetConfig, VictimConfig
from detoxops.data import ImageSet
from detoxops.defenses import dataelixir as de
from detoxops.defenses.elixir import candidates as cand_mod
from detoxops.defenses.elixir.purification_cache import PurificationCache, content_digests, noise_keys
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet
from detoxops.models import build_classifier


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = np.tile(np.arange(2), 10).astype(np.int64)
    train = ImageSet(images=images, labels=labels, class_names=["a", "b"])
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16]))
    purifier = Purifier(unet, NoiseSchedule.from_config(ScheduleConfig()))
    victim = build_classifier("small_cnn", 2, image_size=8, width=4, seed=0).eval()
    cfg = DataElixirConfig(T=6, rounds=2, keep_last=2, tau=2, sampler="ddpm", shard_size=8, batch_size=5,
                           relabel_epochs=1, finetune_epochs=1, noise="per_image")
    return train, purifier, victim, cfg


def test_digests_follow_content_and_seed():
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    imgs[2] = imgs[0]
    d = content_digests(imgs, seed=0)
    assert d.shape == (3, 16) and d.dtype == np.uint8
    assert np.array_equal(d[0], d[2]) and not np.array_equal(d[0], d[1])
    assert not np.array_equal(content_digests(imgs, seed=1)[0], d[0])
    assert all(0 <= k < 2**63 for k in noise_keys(d))
    with pytest.raises(ValueError, match="uint8 images"):
        content_digests(imgs.astype(np.float32), seed=0)


def test_an_image_gets_the_same_candidates_in_any_dataset_layout(setup, tmp_path):
    """Reordered data, other shard and batch sizes, no cache shared: the per-sample candidates are the same."""
    train, purifier, victim, cfg = setup
    full = de.DataElixir(purifier, cfg).candidate_sets(train, victim, tmp_path / "a", progress=False)
    order = np.random.default_rng(3).permutation(len(train))
    shuffled = ImageSet(images=train.images[order], labels=train.labels[order], class_names=train.class_names)
    other = cfg.model_copy(update={"shard_size": 7, "batch_size": 3})
    moved = de.DataElixir(purifier, other).candidate_sets(shuffled, victim, tmp_path / "b", progress=False)
    # equal up to the last float bits a network's output moves by with the batch size (the images are uint8)
    assert np.array_equal(full["labels"][order], moved["labels"])
    assert np.allclose(full["distances"][order], moved["distances"], atol=1e-5)
    diff = np.abs(full["images"][order].astype(int) - moved["images"].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    # per_shard noise differs (a sample's noise depends on its place), so the two modes are not the same draw
    positional = de.DataElixir(purifier, cfg.model_copy(update={"noise": "per_shard"})).candidate_sets(
        train, victim, tmp_path / "c", progress=False)
    assert not np.array_equal(positional["images"], full["images"])


def test_shared_images_are_purified_once_across_datasets_and_victims(setup, tmp_path, purification_counter):
    train, purifier, victim, cfg = setup
    shared = cfg.model_copy(update={"purification_cache": str(tmp_path / "cache")})
    calls = purification_counter
    first = de.DataElixir(purifier, shared).candidate_sets(train, victim, tmp_path / "w1", progress=False)
    assert calls["images"] == 20
    # another dataset: 5 images replaced (as a poisoning would), the rest the same
    images = train.images.copy()
    images[:5] = 255 - images[:5]
    poisoned = ImageSet(images=images, labels=train.labels, class_names=train.class_names)
    second = de.DataElixir(purifier, shared).candidate_sets(poisoned, victim, tmp_path / "w2", progress=False)
    assert calls["images"] == 25  # only the 5 new images
    for key in ("labels", "distances", "selected", "images"):
        assert np.array_equal(second[key][5:], first[key][5:]), key
    # another victim: nothing purified, the same candidates scored by it
    other_victim = build_classifier("small_cnn", 2, image_size=8, width=4, seed=1).eval()
    third = de.DataElixir(purifier, shared).candidate_sets(poisoned, other_victim, tmp_path / "w3", progress=False)
    assert calls["images"] == 25
    assert not np.array_equal(third["distances"], second["distances"])
    # the victim-independent half alone: nothing left to purify
    assert de.DataElixir(purifier, shared).purify(poisoned, tmp_path / "w3", progress=False) == 0
    assert calls["images"] == 25


def test_purify_first_then_sanitize_only_scores(setup, tmp_path, purification_counter):
    train, purifier, victim, cfg = setup
    elixir = de.DataElixir(purifier, cfg, VictimConfig(epochs=1, batch_size=8))
    calls = purification_counter
    assert elixir.purify(train, tmp_path, shard_ids=[0], progress=False) == 8
    assert elixir.purify(train, tmp_path, progress=False) == 12  # shards 1, 2
    assert calls["images"] == 20
    res = elixir.sanitize(train, victim, tmp_path, progress=False)
    assert calls["images"] == 20 + res.decisions["repurified"].sum()  # stage 4's extra rounds only
    with pytest.raises(ValueError, match="per_image"):
        de.DataElixir(purifier, cfg.model_copy(update={"noise": "per_shard"})).purify(train, tmp_path)
    with pytest.raises(ValueError, match="out of range"):
        elixir.purify(train, tmp_path, shard_ids=[3], progress=False)


def test_damaged_pack_is_purified_again(setup, tmp_path, caplog, request):
    train, purifier, victim, cfg = setup
    elixir = de.DataElixir(purifier, cfg)
    full = elixir.candidate_sets(train, victim, tmp_path / "w1", progress=False)
    cache_root = tmp_path / "w1" / "purification-cache"  # the default place: inside the work folder
    packs = sorted(cache_root.glob("*/pack-*.cands.npy"))
    assert len(packs) == 5  # one pack per purified batch: shards of 8, 8, 4 in batches of 5 give 2 + 2 + 1
    elixir = de.DataElixir(purifier, cfg.model_copy(update={"purification_cache": str(cache_root)}))
    packs[0].write_bytes(packs[0].read_bytes()[:100])  # truncated
    calls = request.getfixturevalue("purification_counter")  # counting from here on
    again = elixir.candidate_sets(train, victim, tmp_path / "w2", progress=False)  # new work folder, same cache
    assert 0 < calls["images"] <= 5
    assert "unreadable purification pack" in caplog.text
    assert np.array_equal(again["images"], full["images"])


def test_cache_refuses_another_setting_and_bad_rows(tmp_path):
    cache = PurificationCache(tmp_path, {"a": 1})
    (tmp_path / next(p.name for p in tmp_path.iterdir()) / "fingerprint.json").write_text('{"a": 2}')
    with pytest.raises(ValueError, match="another setting"):
        PurificationCache(tmp_path, {"a": 1})
    with pytest.raises(ValueError, match="uint8 candidates"):
        cache.put(np.zeros((2, 16), np.uint8), np.zeros((2, 1, 4, 4, 3), np.float32))


def test_candidates_module_split_matches_build_candidates(setup):
    """build_candidates is purify_candidates then score_candidates (the per_shard path's numbers are unchanged)."""
    train, purifier, victim, cfg = setup
    x01 = torch.from_numpy(train.images[:4]).permute(0, 3, 1, 2).float().div(255)
    whole = cand_mod.build_candidates(purifier, victim, x01, cfg, torch.Generator().manual_seed(3))
    cands = cand_mod.purify_candidates(purifier, x01, cfg, torch.Generator().manual_seed(3))
    labels, dists = cand_mod.score_candidates(victim, x01, cands)
    assert torch.equal(whole.images, cands) and torch.equal(whole.labels, labels)
    assert torch.equal(whole.distances, dists.float())


def test_relabelled_image_modes_change_only_the_images_relabelled_away_from_the_target(setup, tmp_path):
    train, purifier, victim, cfg = setup
    # thresholds this low make an untrained victim's transitions name a target, so samples are relabelled
    loose = cfg.model_copy(update={"anomaly_threshold": 0.1, "min_target_share": 0.0, "tau": 1})
    vcfg = VictimConfig(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="per_image"):
        de.DataElixir(purifier, loose.model_copy(update={"noise": "per_shard", "relabelled_image": "nearest"}))
    runs = {mode: de.DataElixir(purifier, loose.model_copy(update={"relabelled_image": mode}), vcfg).sanitize(
        train, victim, tmp_path, progress=False) for mode in ("chosen", "nearest", "input")}
    chosen = runs["chosen"]
    away = chosen.flagged & ~np.isin(chosen.dataset.labels, chosen.target_labels)
    assert away.any()
    for mode, res in runs.items():
        assert np.array_equal(res.dataset.labels, chosen.dataset.labels), mode  # labels never depend on it
        assert np.array_equal(res.dataset.images[~away], chosen.dataset.images[~away]), mode
    assert np.array_equal(runs["input"].dataset.images[away], train.images[away])
    assert (runs["input"].decisions["chosen_round"][away] == -1).all()
    # nearest: the stored candidate with the smallest distance
    digests = content_digests(train.images[away], loose.seed)
    every, found = de.DataElixir(purifier, loose).purification_cache(tmp_path).get(digests)
    assert found.all()
    nearest = runs["nearest"].extras["distances"][away].argmin(1)
    assert np.array_equal(runs["nearest"].dataset.images[away], every[np.arange(away.sum()), nearest])
    assert np.array_equal(runs["nearest"].decisions["chosen_round"][away], nearest // loose.keep_last)
