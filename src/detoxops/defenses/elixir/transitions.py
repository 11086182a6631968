"""Label-transition analysis (DataElixir, "Anomalous Samples Identification", equation 3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BENIGN, POISONED, SUSPICIOUS = 0, 1, 2
SET_NAMES = {BENIGN: "benign", POISONED: "poisoned", SUSPICIOUS: "suspicious"}


@dataclass
class Transitions:
    counts: np.ndarray  # (N, C) label histogram of every candidate set
    eta: np.ndarray  # (N,) transition coefficient: the second-highest label count
    consensus: np.ndarray  # (N,) most frequent candidate label (y_g for P, y_v for S)
    sets: np.ndarray  # (N,) BENIGN / POISONED / SUSPICIOUS


def label_counts(candidate_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, K) candidate labels → (N, C) counts, vectorised with one bincount."""
    n, _ = candidate_labels.shape
    if candidate_labels.size and (candidate_labels.min() < 0 or candidate_labels.max() >= num_classes):
        raise ValueError(f"candidate labels must lie in [0, {num_classes})")
    flat = (np.arange(n)[:, None] * num_classes + candidate_labels).ravel()
    return np.bincount(flat, minlength=n * num_classes).reshape(n, num_classes)


def analyse_transitions(
    candidate_labels: np.ndarray, labels: np.ndarray, num_classes: int, tau: float
) -> Transitions:
    """Split samples into B / P / S.

    η = second-highest count of the candidate labels. η ≥ τ → suspicious (S). Otherwise the candidate labels are
    (almost) unimodal: benign (B) when the mode is the sample's own label, poisoned (P) when the mode differs —
    the paper's "all candidates equal / all differ" cases, with the mode deciding the rare mixed case where a
    few stray labels stay below τ.
    """
    counts = label_counts(candidate_labels, num_classes)
    top2 = -np.partition(-counts, 1, axis=1)[:, :2] if num_classes > 1 else np.c_[counts, np.zeros_like(counts)]
    eta = top2[:, 1]
    consensus = counts.argmax(axis=1)
    sets = np.where(eta >= tau, SUSPICIOUS, np.where(consensus == labels, BENIGN, POISONED))
    return Transitions(counts=counts, eta=eta, consensus=consensus, sets=sets.astype(np.int8))
