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
    candidate_labels: np.ndarray, labels: np.ndarray, num_classes: int, tau: float, mixed: str = "mode"
) -> Transitions:
    """Split samples into B / P / S.

    η = second-highest count of the candidate labels. η ≥ τ → suspicious (S). Otherwise the candidate labels are
    (almost) unimodal, and equation 3 names two cases: benign (B) when every candidate keeps the sample's label,
    poisoned (P) when every candidate differs from it. It does not name the mixed case (some candidates keep the
    label, the others scatter over labels that each stay below τ). ``mixed = "mode"``: the most frequent label
    decides (B when it is the sample's own, else P); ``mixed = "suspicious"``: a mixed set goes to S, where the
    relabelling model decides — a weak victim's candidates scatter over many labels, so "mixed" is not rare
    (docs/dataelixir.md).
    """
    counts = label_counts(candidate_labels, num_classes)
    top2 = -np.partition(-counts, 1, axis=1)[:, :2] if num_classes > 1 else np.c_[counts, np.zeros_like(counts)]
    eta = top2[:, 1]
    consensus = counts.argmax(axis=1)
    if mixed == "mode":
        unimodal = np.where(consensus == labels, BENIGN, POISONED)
    elif mixed == "suspicious":
        own = counts[np.arange(len(labels)), labels]
        k = candidate_labels.shape[1]
        unimodal = np.where(own == k, BENIGN, np.where(own == 0, POISONED, SUSPICIOUS))
    else:
        raise ValueError(f"mixed must be 'mode' or 'suspicious', got {mixed!r}")
    sets = np.where(eta >= tau, SUSPICIOUS, unimodal)
    return Transitions(counts=counts, eta=eta, consensus=consensus, sets=sets.astype(np.int8))
