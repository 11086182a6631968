"""End-to-end DataElixir on tiny data with a tiny (untrained) purifier and classifier: the pipeline's contracts
(shapes, provenance, decisions, determinism, resume) — the detection quality is measured in benchmarks."""

import numpy as np
import pytest

from detoxops.config import DataElixirConfig, ScheduleConfig, UNetConfig, VictimConfig
from detoxops.data import ImageSet
from detoxops.defenses import dataelixir as de
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet
from detoxops.models import build_classifier


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    labels = np.tile(np.arange(3), 8).astype(np.int64)
    poisoned = np.zeros(24, bool)
    poisoned[:4] = True
    train = ImageSet(images=images, labels=labels, class_names=["a", "b", "c"], poisoned=poisoned)
    unet = build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16]))
    purifier = Purifier(unet, NoiseSchedule.from_config(ScheduleConfig()))
    victim = build_classifier("small_cnn", 3, image_size=8, width=4).eval()
    cfg = DataElixirConfig(T=6, rounds=2, keep_last=3, tau=2, shard_size=10, batch_size=8, relabel_epochs=1,
                           finetune_epochs=1)
    return train, purifier, victim, cfg


def test_sanitize_returns_a_consistent_purified_dataset(setup, tmp_path):
    train, purifier, victim, cfg = setup
    res = de.DataElixir(purifier, cfg, VictimConfig(epochs=1, batch_size=8)).sanitize(
        train, victim, tmp_path, progress=False)
    out = res.dataset
    assert out.images.shape == train.images.shape and out.images.dtype == np.uint8
    assert np.array_equal(out.poisoned, train.poisoned)
    assert np.array_equal(out.original_labels, train.original_labels)
    assert set(res.decisions["set"]) <= {"benign", "poisoned", "suspicious"}
    assert len(res.decisions["final_label"]) == len(train)
    assert np.array_equal(res.flagged, out.labels != train.labels)
    assert res.extras["candidate_labels"].shape == (24, cfg.rounds * cfg.keep_last)
    # only target-label samples may change
    changed = np.flatnonzero(res.flagged)
    assert np.isin(train.labels[changed], res.target_labels).all()
    assert out.meta["sanitize"]["parent_hash"] == train.content_hash()
    assert res.decisions_csv().splitlines()[0].startswith("index,")


def test_deterministic_and_resumes_from_finished_shards(setup, tmp_path, monkeypatch):
    train, purifier, victim, cfg = setup
    elixir = de.DataElixir(purifier, cfg, VictimConfig(epochs=1, batch_size=8))
    full = elixir.candidate_sets(train, victim, tmp_path / "full", progress=False)

    real = de.build_candidates
    calls = {"n": 0}

    def crash_on_second_shard(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # shard 0 has 2 batches (10 images, batch 8); the 3rd call is in shard 1
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(de, "build_candidates", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        elixir.candidate_sets(train, victim, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(de, "build_candidates", real)
    assert len(list((tmp_path / "resumed" / "candidates").glob("*/shard-00000.npz"))) == 1  # keyed work folder
    resumed = elixir.candidate_sets(train, victim, tmp_path / "resumed", progress=False)
    for key in full:
        assert np.array_equal(full[key], resumed[key]), key


def test_shards_computed_apart_in_parallel_equal_one_run(setup, tmp_path, monkeypatch):
    """Two workers (threads, own DataElixir each) compute disjoint shard lists into one work folder at the same
    time; loading them gives exactly the one-process candidates, and nothing is computed again."""
    from concurrent.futures import ThreadPoolExecutor

    train, purifier, victim, cfg = setup
    elixir = de.DataElixir(purifier, cfg)
    assert elixir.shard_bounds(len(train)) == [(0, 10), (10, 20), (20, 24)]
    full = elixir.candidate_sets(train, victim, tmp_path / "one", progress=False)

    def worker(ids):
        return de.DataElixir(purifier, cfg).compute_shards(train, victim, tmp_path / "shared", ids, progress=False)

    with ThreadPoolExecutor(2) as pool:
        computed = list(pool.map(worker, [[0, 2], [1]]))
    assert computed == [[0, 2], [1]]
    assert worker([1, 2]) == []  # stored shards are skipped

    def no_compute(*args, **kwargs):
        raise AssertionError("a stored shard was computed again")

    monkeypatch.setattr(de, "build_candidates", no_compute)
    loaded = elixir.candidate_sets(train, victim, tmp_path / "shared", progress=False)
    for key in full:
        assert np.array_equal(full[key], loaded[key]), key
    with pytest.raises(ValueError, match="3 shards"):
        elixir.compute_shards(train, victim, tmp_path / "shared", [3], progress=False)


def test_purifier_precision_keys_its_own_work_folder(setup, tmp_path):
    """Candidates made with bf16 UNet passes are not resumed by an fp32 run (and the other way round)."""
    train, purifier, victim, cfg = setup
    bf16 = Purifier(purifier.unet, purifier.schedule, precision="bf16")
    folders = {de.DataElixir(p, cfg).work_store(train, victim, tmp_path).folder for p in (purifier, bf16, purifier)}
    assert len(folders) == 2


def test_keep_last_larger_than_the_round_is_an_error(setup, tmp_path):
    train, purifier, victim, _ = setup
    cfg = DataElixirConfig(T=4, rounds=1, keep_last=10)
    with pytest.raises(ValueError, match="keep_last = 10"):
        de.DataElixir(purifier, cfg).sanitize(train, victim, tmp_path, progress=False)


def test_dataelixir_resolves_the_auto_profile_with_its_purifier(setup):
    _, purifier, _, _ = setup
    # an 8-px purifier is a small-image one: the digits preset fills what the config leaves open
    elixir = de.DataElixir(purifier, DataElixirConfig(rounds=1))
    assert (elixir.cfg.T, elixir.cfg.rounds, elixir.cfg.keep_last, elixir.cfg.sampler) == (40, 1, 5, "ddpm")


def test_purify_target_label_also_replaces_the_benign_target_label_images(setup, tmp_path, monkeypatch):
    train, purifier, victim, cfg = setup
    # stage 4 is under test: an untrained victim finds no target, so stage 3 names the label of the first benign
    # sample (its own rule is tested in tests/defenses/elixir); stages 1, 2 and the relabelling model run for real
    detect = de.detect_target_labels

    def a_label_with_benign_samples(counts, labels, anomalous, *args, **kwargs):
        found = detect(counts, labels, anomalous, *args, **kwargs)
        found.target_labels = [int(labels[np.flatnonzero(~anomalous)[0]])]
        return found

    monkeypatch.setattr(de, "detect_target_labels", a_label_with_benign_samples)
    runs = {mode: de.DataElixir(purifier, cfg.model_copy(update={"purify": mode}), VictimConfig(epochs=1, batch_size=8))
            .sanitize(train, victim, tmp_path, progress=False)
            for mode in ("flagged", "target_label", "target_distant", "all")}
    flagged, every = runs["flagged"], runs["target_label"]
    assert flagged.target_labels and flagged.target_labels == every.target_labels
    assert np.array_equal(flagged.dataset.labels, every.dataset.labels)  # images only; the labels are the paper's
    sets = flagged.decisions["set"]
    is_target = np.isin(train.labels, flagged.target_labels)
    in_b = is_target & (sets == "benign")
    assert in_b.any() and (~is_target).any()
    for res in (flagged, every):  # a non-target sample is never touched
        assert np.array_equal(res.dataset.images[~is_target], train.images[~is_target])
    assert np.array_equal(flagged.dataset.images[in_b], train.images[in_b])
    assert not np.array_equal(every.dataset.images[in_b], train.images[in_b])
    assert np.array_equal(every.dataset.images[is_target & ~in_b], flagged.dataset.images[is_target & ~in_b])
    assert (every.decisions["chosen_round"][in_b] >= 0).all() and (flagged.decisions["chosen_round"][in_b] == -1).all()
    # all: every image is its purified candidate (the target-label ones as under target_label), the labels unchanged
    whole = runs["all"]
    assert np.array_equal(whole.dataset.labels, flagged.dataset.labels)
    assert np.array_equal(whole.dataset.images[is_target], every.dataset.images[is_target])
    assert not np.array_equal(whole.dataset.images[~is_target], train.images[~is_target])
    assert (whole.decisions["chosen_round"] >= 0).all()
    # target_distant: of B's target-label samples, those whose chosen candidate lies over one MAD above their median
    distant = runs["target_distant"]
    d = flagged.decisions["chosen_distance"][in_b]
    far = d > np.median(d) + 1.4826 * np.median(np.abs(d - np.median(d)))
    assert 0 < far.sum() < in_b.sum()
    changed = (distant.dataset.images != train.images).reshape(len(train), -1).any(1)
    assert np.array_equal(changed[in_b], far)
    assert np.array_equal(distant.dataset.images[~in_b], flagged.dataset.images[~in_b])


def test_purify_extra_rejects_an_unknown_mode():
    flags = np.array([True, False])
    with pytest.raises(ValueError, match="purify: unknown mode 'some'"):
        de.purify_extra("some", flags, flags, np.zeros(2), 1.0)


def test_purify_target_distant_takes_the_far_moved_target_label_samples_of_b():
    is_target = np.array([1, 1, 1, 1, 1, 1, 0, 1], bool)
    benign = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
    # B's target-label distances: median 0.11, MAD 0.01 (consistent 0.0148): 0.2 is far, 0.12 within one MAD;
    # a far non-target sample (index 6) and a far target sample outside B (index 7) are not B's target samples
    distance = np.array([0.10, 0.11, 0.12, 0.11, 0.20, 0.10, 0.9, 0.9])
    extra = de.purify_extra("target_distant", is_target, benign, distance, 1.0)
    assert np.flatnonzero(extra).tolist() == [4]
    assert np.flatnonzero(de.purify_extra("target_distant", is_target, benign, distance, 0.0)).tolist() == [2, 4]
    assert not de.purify_extra("target_distant", is_target, ~benign, distance, 1.0)[:6].any()
    assert de.purify_extra("target_label", is_target, benign, distance, 1.0).tolist() == is_target.tolist()


@pytest.fixture
def relabel_calls(monkeypatch):
    """Stage 4 with a target and an S: label 0 is named the target and half its samples are put in S (the
    constant untrained victim finds neither); the real relabelling runs, and each call's arguments are kept."""
    detect, transitions, relabel = de.detect_target_labels, de.analyse_transitions, de.relabel_suspicious
    calls = []

    def label_zero(counts, labels, anomalous, *args, **kwargs):
        found = detect(counts, labels, anomalous, *args, **kwargs)
        found.target_labels = [0]
        return found

    def half_of_label_zero_suspicious(cand_labels, labels, *args, **kwargs):
        found = transitions(cand_labels, labels, *args, **kwargs)
        found.sets[np.flatnonzero(labels == 0)[::2]] = de.SUSPICIOUS
        return found

    def recording(current, suspicious_images, votes, *args, **kwargs):
        calls.append({"current": current, "images": suspicious_images, "votes": votes,
                      "query": kwargs.get("query_images"), "init": kwargs.get("init")})
        return relabel(current, suspicious_images, votes, *args, **kwargs)

    monkeypatch.setattr(de, "detect_target_labels", label_zero)
    monkeypatch.setattr(de, "analyse_transitions", half_of_label_zero_suspicious)
    monkeypatch.setattr(de, "relabel_suspicious", recording)
    return calls


def test_relabel_images_candidates_trains_the_relabelling_model_on_purified_candidates(setup, tmp_path,
                                                                                      relabel_calls):
    train, purifier, victim, cfg = setup
    results, seen = {}, {}
    for mode in ("dataset", "candidates"):
        elixir = de.DataElixir(purifier, cfg.model_copy(update={"relabel_images": mode}),
                               VictimConfig(epochs=1, batch_size=8))
        results[mode] = elixir.sanitize(train, victim, tmp_path, progress=False)
        seen[mode] = relabel_calls[-1]["current"]
    in_s = results["dataset"].decisions["set"] == "suspicious"
    assert in_s.sum() == 4 and len(relabel_calls) == 2
    keep = ~in_s
    candidates = elixir.candidate_sets(train, victim, tmp_path, progress=False)["images"]
    # the same samples and labels; only the images differ: the stage-4 dataset (mostly the input) or the candidates
    assert np.array_equal(seen["dataset"].labels, seen["candidates"].labels)
    assert np.array_equal(seen["candidates"].images, candidates[keep])
    untouched = keep & (results["dataset"].decisions["chosen_round"] < 0)
    assert np.array_equal(seen["dataset"].images[untouched[keep]], train.images[untouched])
    assert not np.array_equal(seen["candidates"].images[untouched[keep]], train.images[untouched])


def test_relabel_flagged_gives_the_target_label_samples_in_p_to_the_relabelling_model(setup, tmp_path,
                                                                                    relabel_calls):
    train, purifier, victim, cfg = setup
    results = {mode: de.DataElixir(purifier, cfg.model_copy(update={"relabel": mode}),
                                   VictimConfig(epochs=1, batch_size=8)).sanitize(train, victim, tmp_path,
                                                                                  progress=False)
               for mode in ("suspicious", "flagged")}
    sets, labels = results["suspicious"].decisions["set"], np.asarray(train.labels)
    in_s, in_p = (labels == 0) & (sets == "suspicious"), (labels == 0) & (sets == "poisoned")
    assert in_s.sum() == 4 and in_p.sum() == 4
    paper, flagged = relabel_calls
    candidates = de.DataElixir(purifier, cfg).candidate_sets(train, victim, tmp_path, progress=False)
    assert np.array_equal(paper["images"], candidates["images"][in_s])
    assert np.array_equal(flagged["images"], candidates["images"][in_s | in_p])  # P and S, in sample order
    # the model trains without them, and a P sample's vote decides only agreement, as in S
    assert len(flagged["current"]) == len(train) - 8 and len(paper["current"]) == len(train) - 4
    votes = results["suspicious"].decisions["vote"]
    assert np.array_equal(results["suspicious"].decisions["final_label"][in_p], votes[in_p])
    final = results["flagged"].decisions["final_label"]
    agreed = results["flagged"].decisions["relabel_agreed"].astype(bool)
    assert np.array_equal(final[in_p & agreed], votes[in_p & agreed])
    # sets and detection are the same: only who labels P changed
    assert np.array_equal(results["flagged"].decisions["set"], sets)


def test_relabel_view_input_asks_the_relabelling_model_about_the_input_images(setup, tmp_path, relabel_calls):
    train, purifier, victim, cfg = setup
    results = {view: de.DataElixir(purifier, cfg.model_copy(update={"relabel_view": view}),
                                   VictimConfig(epochs=1, batch_size=8)).sanitize(train, victim, tmp_path,
                                                                                  progress=False)
               for view in ("candidate", "input")}
    in_s = results["candidate"].decisions["set"] == "suspicious"
    paper, own = relabel_calls
    assert paper["query"] is None  # the paper: asked about the purified candidates it is given
    assert np.array_equal(own["query"], train.images[in_s])
    assert np.array_equal(own["images"], paper["images"])  # agreed samples still join as their candidates
    # and the purified set still holds the candidates for S: the view changes labels only
    assert np.array_equal(results["input"].dataset.images, results["candidate"].dataset.images)


def test_relabel_init_victim_hands_the_victim_to_the_relabelling_model(setup, tmp_path, relabel_calls):
    train, purifier, victim, cfg = setup
    for init in ("scratch", "victim"):
        de.DataElixir(purifier, cfg.model_copy(update={"relabel_init": init}),
                      VictimConfig(epochs=1, batch_size=8)).sanitize(train, victim, tmp_path, progress=False)
    paper, own = relabel_calls
    assert paper["init"] is None and own["init"] is victim


def test_relabel_init_victim_refuses_a_victim_detoxops_did_not_build_before_any_candidate(setup, tmp_path):
    import torch

    train, purifier, _, cfg = setup
    foreign = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 3))
    with pytest.raises(ValueError, match=r"relabel_init: victim .* \(Sequential\) was not built by detoxops"):
        de.DataElixir(purifier, cfg.model_copy(update={"relabel_init": "victim"})).sanitize(
            train, foreign, tmp_path, progress=False)
    assert not (tmp_path / "candidates").exists()


def test_relabel_suspicious_from_the_victim_starts_from_its_weights_and_leaves_it_untouched():
    import torch

    from detoxops.defenses.elixir.relabel import relabel_suspicious

    rng = np.random.default_rng(0)
    images = np.concatenate([rng.integers(0, 40, (40, 8, 8, 3)), rng.integers(215, 256, (40, 8, 8, 3))]).astype(np.uint8)
    cfg = VictimConfig(epochs=5, batch_size=16, seed=0)
    # a "victim" that learned the opposite labelling: dark -> 1, bright -> 0
    victim = build_classifier("small_cnn", 2, image_size=8, width=4)
    from detoxops.models import predict, train_classifier

    inverted = ImageSet(images=images, labels=np.repeat([1, 0], 40), class_names=["dark", "bright"])
    train_classifier(victim, inverted, cfg, progress=False)
    victim.eval()
    assert predict(victim, images[:4]).tolist() == [1, 1, 1, 1]
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    current = inverted.replace(labels=np.repeat([0, 1], 40))  # the set says dark -> 0
    dark = images[:4]
    # at a vanishing fine-tuning rate the copy keeps the victim's answer; from scratch the set's answer is learned
    warm, _ = relabel_suspicious(current, dark, np.full(4, 2), "small_cnn", cfg, 0, 1e-6, init=victim)
    cold, _ = relabel_suspicious(current, dark, np.full(4, 2), "small_cnn", cfg, 0, 1e-6)
    assert warm.tolist() == [1, 1, 1, 1] and cold.tolist() == [0, 0, 0, 0]
    assert all(torch.equal(before[k], v) for k, v in victim.state_dict().items())


def test_relabel_suspicious_labels_by_the_query_images():
    from detoxops.defenses.elixir.relabel import relabel_suspicious

    rng = np.random.default_rng(0)
    # two classes a model tells apart at once: dark and bright images
    images = np.concatenate([rng.integers(0, 40, (40, 8, 8, 3)), rng.integers(215, 256, (40, 8, 8, 3))]).astype(np.uint8)
    labels = np.repeat([0, 1], 40)
    current = ImageSet(images=images, labels=labels, class_names=["dark", "bright"])
    dark, bright = images[:4], images[40:44]
    cfg = VictimConfig(epochs=5, batch_size=16, seed=0)
    # asked about bright query images, the dark suspicious images are labelled bright (votes agree with nothing)
    out, agree = relabel_suspicious(current, dark, np.full(4, 0), "small_cnn", cfg, 0, 0.1, query_images=bright)
    plain, _ = relabel_suspicious(current, dark, np.full(4, 1), "small_cnn", cfg, 0, 0.1)
    assert out.tolist() == [1, 1, 1, 1] and not agree.any() and plain.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="query_images has 3 images for 4 suspicious samples"):
        relabel_suspicious(current, dark, np.zeros(4), "small_cnn", cfg, 0, 0.1, query_images=bright[:3])


def test_target_rounds_purify_again_only_the_purified_images_that_end_with_a_target_label(setup, tmp_path,
                                                                                        monkeypatch):
    train, purifier, victim, cfg = setup
    detect = de.detect_target_labels

    def a_label_with_benign_samples(counts, labels, anomalous, *args, **kwargs):  # as in the purify test above
        found = detect(counts, labels, anomalous, *args, **kwargs)
        found.target_labels = [int(labels[np.flatnonzero(~anomalous)[0]])]
        return found

    monkeypatch.setattr(de, "detect_target_labels", a_label_with_benign_samples)
    base = cfg.model_copy(update={"purify": "target_label"})
    runs = {k: de.DataElixir(purifier, base.model_copy(update={"target_rounds": k}), VictimConfig(epochs=1, batch_size=8))
            .sanitize(train, victim, tmp_path, progress=False) for k in (0, 1, 2)}
    paper, once, twice = runs[0], runs[1], runs[2]
    assert np.array_equal(paper.dataset.labels, once.dataset.labels)  # images only
    again = (paper.decisions["chosen_round"] >= 0) & np.isin(paper.dataset.labels, paper.target_labels)
    assert again.any() and (~again).any()
    assert np.array_equal(once.decisions["repurified"].astype(bool), again)
    assert not paper.decisions["repurified"].any()
    # every other image as without the option; these ones changed, and each extra round changes them further
    assert np.array_equal(once.dataset.images[~again], paper.dataset.images[~again])
    assert (once.dataset.images[again] != paper.dataset.images[again]).reshape(again.sum(), -1).any(1).all()
    assert not np.array_equal(twice.dataset.images[again], once.dataset.images[again])
    # deterministic given the seed
    rerun = de.DataElixir(purifier, base.model_copy(update={"target_rounds": 1}), VictimConfig(epochs=1, batch_size=8)
                          ).sanitize(train, victim, tmp_path, progress=False)
    assert np.array_equal(rerun.dataset.images, once.dataset.images)
