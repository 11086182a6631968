import numpy as np
import pytest

from detoxops.defenses.elixir.purify import candidate_distance, select_at_percentile
from detoxops.defenses.elixir.shards import ShardStore
from detoxops.defenses.elixir.target_label import detect_target_labels, label_discrepancy, mad_anomaly_index
from detoxops.defenses.elixir.transitions import (
    BENIGN,
    POISONED,
    SUSPICIOUS,
    analyse_transitions,
    label_counts,
)


def test_label_counts_and_eta_follow_equation_3():
    cand = np.array([
        [1] * 10,               # all equal to own label 1 → benign, eta 0
        [3] * 10,               # all differ from own label 0 → poisoned, vote 3
        [0] * 5 + [4] * 5,      # bimodal, second peak 5 ≥ tau → suspicious
        [2] * 8 + [7] * 2,      # stray labels below tau, mode = own label → benign
    ])
    labels = np.array([1, 0, 0, 2])
    counts = label_counts(cand, 10)
    assert counts[2, 0] == 5 and counts[2, 4] == 5
    tr = analyse_transitions(cand, labels, 10, tau=5)
    assert tr.eta.tolist() == [0, 0, 5, 2]
    assert tr.sets.tolist() == [BENIGN, POISONED, SUSPICIOUS, BENIGN]
    assert tr.consensus[1] == 3


def test_mixed_candidate_sets_go_to_s_when_asked():
    # eta < tau = 2 everywhere; own label 0 (rows 0-2), 5 (row 3)
    cand = np.array([
        [0, 0, 0, 0],   # all keep the label → B either way
        [0, 3, 5, 0],   # mixed, mode = own label: B by the mode, S by equation 3 read literally
        [3, 4, 5, 0],   # mixed, own label in the minority: the mode (ties: lowest label, 0) says B; S literally
        [3, 4, 1, 2],   # every candidate changes the label → P either way
    ])
    labels = np.array([0, 0, 0, 5])
    mode = analyse_transitions(cand, labels, 10, tau=2)
    literal = analyse_transitions(cand, labels, 10, tau=2, mixed="suspicious")
    assert mode.sets.tolist() == [BENIGN, BENIGN, BENIGN, POISONED]
    assert literal.sets.tolist() == [BENIGN, SUSPICIOUS, SUSPICIOUS, POISONED]
    assert (literal.eta == mode.eta).all() and (literal.consensus == mode.consensus).all()
    with pytest.raises(ValueError, match="mixed must be"):
        analyse_transitions(cand, labels, 10, tau=2, mixed="vote")


def test_label_counts_reject_out_of_range_labels():
    with pytest.raises(ValueError, match="candidate labels must lie in"):
        label_counts(np.array([[0, 10]]), 10)


def test_mad_anomaly_index_hand_computed_and_finite_in_edge_cases():
    v = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, |dev| = [2,1,0,1,97] → MAD 1 → scale 1.4826
    assert mad_anomaly_index(v)[-1] == pytest.approx(97 / 1.4826)
    # most labels have no anomalous sample: MAD = 0 → mean-absolute-deviation fallback, still finite
    idx = mad_anomaly_index(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 50.0]))
    assert np.all(np.isfinite(idx)) and idx[-1] > 2 and np.all(idx[:-1] <= 0)
    # nothing anomalous at all: all identical → all zero
    assert mad_anomaly_index(np.zeros(10)).tolist() == [0.0] * 10


def test_target_label_detected_for_chaotic_target_and_none_on_clean_data():
    rng = np.random.default_rng(0)
    num_classes, k = 10, 50
    labels = np.repeat(np.arange(num_classes), 20)
    cand = np.repeat(labels[:, None], k, axis=1)
    # poisoned samples labelled 0 whose candidates return to many true labels
    poisoned = np.arange(0, 20)
    cand[poisoned, 25:] = rng.integers(1, num_classes, (len(poisoned), 1))
    # one false positive for a benign label
    cand[45, 40:] = 7
    tr = analyse_transitions(cand, labels, num_classes, tau=5)
    det = detect_target_labels(tr.counts, labels, tr.sets != BENIGN, num_classes, threshold=2.0)
    assert det.target_labels == [0]
    assert np.all(np.isfinite(det.kl_index)) and np.all(np.isfinite(det.count_index))
    # clean data: no anomalous sample anywhere → no target, finite indices
    clean = np.repeat(labels[:, None], k, axis=1)
    tr = analyse_transitions(clean, labels, num_classes, tau=5)
    det = detect_target_labels(tr.counts, labels, tr.sets != BENIGN, num_classes, threshold=2.0)
    assert det.target_labels == [] and np.all(np.isfinite(det.kl_index))


def test_a_label_with_too_few_anomalous_samples_is_not_a_target():
    # a clean set with a good victim: two samples of label 3 have candidates split between 3 and another label
    # (KL ≈ 0.7 from two samples), every other label has at most one anomalous sample with a unimodal pool
    num_classes, k = 10, 15
    labels = np.repeat(np.arange(num_classes), 100)
    cand = np.repeat(labels[:, None], k, axis=1)
    for row, other in ((300, 8), (301, 5)):
        cand[row, 1::2] = other
    for label in (1, 2):
        cand[label * 100, :] = (label + 1) % num_classes
    tr = analyse_transitions(cand, labels, num_classes, tau=5)
    anomalous = tr.sets != BENIGN
    ungated = detect_target_labels(tr.counts, labels, anomalous, num_classes, threshold=2.0)
    assert ungated.target_labels == [3]  # the MAD index alone calls two noisy samples an attack
    gated = detect_target_labels(tr.counts, labels, anomalous, num_classes, threshold=2.0, min_support=5)
    assert gated.target_labels == []
    assert gated.to_dict()["support"][3] == 2 and gated.to_dict()["min_support"] == 5
    # a real target (20 chaotic samples) passes the same gate
    rng = np.random.default_rng(0)
    cand[:20, 7:] = rng.integers(1, num_classes, (20, 1))
    tr = analyse_transitions(cand, labels, num_classes, tau=5)
    det = detect_target_labels(tr.counts, labels, tr.sets != BENIGN, num_classes, threshold=2.0, min_support=5)
    assert det.target_labels == [0]


def test_several_target_labels_can_be_found():
    num_classes, k = 10, 50
    labels = np.repeat(np.arange(num_classes), 20)
    cand = np.repeat(labels[:, None], k, axis=1)
    rng = np.random.default_rng(1)
    for target in (0, 5):
        rows = np.flatnonzero(labels == target)
        cand[rows, 20:] = rng.integers(0, num_classes, (len(rows), 30))
    tr = analyse_transitions(cand, labels, num_classes, tau=5)
    det = detect_target_labels(tr.counts, labels, tr.sets != BENIGN, num_classes, threshold=2.0)
    assert det.target_labels == [0, 5]


def test_label_discrepancy_kl_is_zero_for_unimodal_pools():
    counts = np.array([[0, 10, 0], [0, 0, 10]])
    kl, total = label_discrepancy(counts, np.array([1, 2]), np.array([True, True]), 3)
    assert total.tolist() == [0, 10, 10]
    assert kl[1] == pytest.approx(0, abs=1e-3) and kl[0] == 0


def test_selection_takes_the_80th_percentile_candidate():
    dist = np.array([[0.1, 0.5, 0.3, 0.9, 0.7, 0.2]])  # sorted: .1 .2 .3 .5 .7 .9 → rank round(0.8·5)=4 → .7
    assert select_at_percentile(dist, 80.0).tolist() == [4]
    assert select_at_percentile(dist, 0.0).tolist() == [0]
    import torch

    d = candidate_distance(torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0]))
    assert d.tolist() == [0.0, 1.0]


def test_shard_store_is_atomic_and_refuses_a_different_run(tmp_path):
    store = ShardStore(tmp_path, {"data": "a"})
    store.save(0, labels=np.arange(3))
    assert store.done(0) and not store.done(1)
    assert store.load(0)["labels"].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob(".shard-*"))
    with pytest.raises(ValueError, match="different run"):
        ShardStore(tmp_path, {"data": "b"})


def test_target_rules_combine_the_two_indices_as_documented():
    # label 0: very many anomalous candidates but a pool only moderately more chaotic than the others
    labels = np.repeat(np.arange(10), 10)
    counts = np.zeros((100, 10), dtype=np.int64)
    counts[np.arange(100), labels] = 50
    anomalous = np.zeros(100, bool)
    rng = np.random.default_rng(0)
    for y in range(10):
        rows = np.flatnonzero(labels == y)[: (10 if y == 0 else 1 + y % 2)]
        anomalous[rows] = True
        other = (y + 1 + rng.integers(0, 3, len(rows))) % 10
        counts[rows, y] = 30
        counts[rows, other] += 20
    both = detect_target_labels(counts, labels, anomalous, 10, 2.0, rule="both")
    mean = detect_target_labels(counts, labels, anomalous, 10, 2.0, rule="mean")
    either = detect_target_labels(counts, labels, anomalous, 10, 2.0, rule="either")
    assert set(both.target_labels) <= set(mean.target_labels) <= set(either.target_labels)
    assert 0 in either.target_labels
    with pytest.raises(ValueError, match="target_rule"):
        detect_target_labels(counts, labels, anomalous, 10, 2.0, rule="max")
