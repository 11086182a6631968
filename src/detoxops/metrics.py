"""The papers' metrics (definitions: shared reference notes, BackdoorBench ``utils/trainer_cls.py``).

- CA: top-1 accuracy on the full clean test set.
- ASR: on the triggered test images whose true label is not the target, the fraction classified as the target.
- PA: on the same triggered images, the fraction classified as their true label (BackdoorBench's RA).
- TPR / FPR (DataElixir): a training sample counts as detected when its label in the purified dataset differs
  from its raw label; TPR over truly poisoned samples, FPR over benign ones.

Every rate is a fraction in [0, 1] in code, in MLflow and in stored results; :func:`percent` converts one for
display (tables, printed summaries) and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "clean_accuracy",
    "attack_success_rate",
    "poisoned_accuracy",
    "detection_rates",
    "evaluate_backdoor",
    "confusion_matrix",
    "percent",
    "percent_rates",
    "fraction_rates",
]

RATE_KEYS = ("ca", "pa", "asr", "tpr", "fpr", "acc")
"""The keys of a result row that hold rates (fractions in code)."""


def _check_pair(pred: np.ndarray, ref: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.ndim != 1 or ref.ndim not in (0, 1):
        raise ValueError(f"{what}: predictions must be 1-D, got shape {pred.shape}")
    if ref.ndim == 1 and pred.shape != ref.shape:
        raise ValueError(f"{what}: {len(pred)} predictions but {len(ref)} labels")
    if len(pred) == 0:
        raise ValueError(f"{what}: no samples to evaluate")
    return pred, ref


def clean_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    pred, labels = _check_pair(pred, labels, "clean_accuracy")
    return float((pred == labels).mean())


def attack_success_rate(pred_triggered: np.ndarray, target: int) -> float:
    """Fraction of triggered non-target images predicted as ``target``."""
    pred, _ = _check_pair(pred_triggered, np.asarray(target), "attack_success_rate")
    return float((pred == target).mean())


def poisoned_accuracy(pred_triggered: np.ndarray, true_labels: np.ndarray) -> float:
    """Fraction of triggered non-target images predicted as their true label."""
    pred, labels = _check_pair(pred_triggered, true_labels, "poisoned_accuracy")
    return float((pred == labels).mean())


def detection_rates(
    raw_labels: np.ndarray, purified_labels: np.ndarray, poisoned: np.ndarray
) -> tuple[float, float]:
    """(TPR, FPR) of a sanitised dataset; NaN for a rate whose denominator is empty (no poisoned / no benign)."""
    raw, pur, flags = np.asarray(raw_labels), np.asarray(purified_labels), np.asarray(poisoned, dtype=bool)
    if not (raw.shape == pur.shape == flags.shape) or raw.ndim != 1:
        raise ValueError(
            f"detection_rates: shapes differ (raw {raw.shape}, purified {pur.shape}, poisoned {flags.shape})"
        )
    if len(raw) == 0:
        raise ValueError("detection_rates: no samples")
    detected = raw != pur
    tpr = float(detected[flags].mean()) if flags.any() else float("nan")
    fpr = float(detected[~flags].mean()) if (~flags).any() else float("nan")
    return tpr, fpr


def evaluate_backdoor(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    clean_images: np.ndarray,
    clean_labels: np.ndarray,
    triggered_images: np.ndarray,
    triggered_labels: np.ndarray,
    target: int,
) -> dict[str, float]:
    """CA on the clean test set; PA / ASR on the triggered non-target set (``predict_fn`` maps uint8 NHWC
    images to labels — a classifier alone, or a defense in front of it)."""
    if np.any(np.asarray(triggered_labels) == target):
        raise ValueError("evaluate_backdoor: the triggered set must exclude target-class images (BackdoorBench)")
    clean_pred = np.asarray(predict_fn(clean_images))
    trig_pred = np.asarray(predict_fn(triggered_images))
    return {
        "ca": clean_accuracy(clean_pred, clean_labels),
        "pa": poisoned_accuracy(trig_pred, triggered_labels),
        "asr": attack_success_rate(trig_pred, target),
    }


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    pred, labels = _check_pair(pred, labels, "confusion_matrix")
    return np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def percent(rate: float | None) -> float | None:
    """A fraction as percent for display; ``None`` and NaN stay as they are."""
    return None if rate is None else 100.0 * float(rate)


def percent_rates(row: dict, keys: tuple[str, ...] = RATE_KEYS) -> dict:
    """A copy of a result row with its rates (``keys`` present, numeric) in percent, for a displayed or stored table."""
    return {k: (percent(v) if k in keys and isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in row.items()}


def fraction_rates(row: dict, keys: tuple[str, ...] = RATE_KEYS) -> dict:
    """The inverse of :func:`percent_rates`: a row read from a table stored in percent, its rates as fractions."""
    return {k: (float(v) / 100.0 if k in keys and isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in row.items()}
