"""CA / PA / ASR of a black-box classifier behind a list of defenses (SampDetox's tables 1, 2, 8, 12).

* CA  -- accuracy on the clean test images (all classes) after the defense;
* PA  -- on the triggered non-target test images, the fraction classified as their true label;
* ASR -- on the same images, the fraction classified as the attack's target.

When the defense returns a ``trigger_map`` and the trigger region of the poisoned images is known, the row
also carries the map's quality (``map_auc``, ``trigger_level``, ``other_level``, see ``map_quality``) and
``image_level``, the mean stage-2 level over clean images (how much a defense disturbs clean inputs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from detoxops.defenses.drift import label_drift
from detoxops.defenses.guard import Detoxifier
from detoxops.defenses.map_quality import changed_pixels, trigger_map_quality
from detoxops.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy

__all__ = ["EvalSet", "backdoor_rates", "drift_measures", "evaluate_defense", "evaluate_defenses", "eval_inputs", "map_measures",
           "sample_at_most", "split_eval_sets", "split_eval_indices"]


@dataclass
class EvalSet:
    """What a defense is scored on. Images uint8 (N, H, W, 3); ``trigger_mask`` bool (Np, H, W) or None."""

    clean_images: np.ndarray
    clean_labels: np.ndarray
    poisoned_images: np.ndarray
    poisoned_labels: np.ndarray  # true labels of the triggered images (none equals ``target``)
    target: int
    trigger_mask: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        for field_name in ("clean", "poisoned"):
            imgs = getattr(self, f"{field_name}_images")
            labels = np.asarray(getattr(self, f"{field_name}_labels"), dtype=np.int64)
            setattr(self, f"{field_name}_labels", labels)
            if len(imgs) != len(labels):
                raise ValueError(f"EvalSet.{field_name}: {len(imgs)} images but {len(labels)} labels")
        if np.any(self.poisoned_labels == self.target):
            raise ValueError(
                f"EvalSet.poisoned_labels contains the target {self.target}: ASR needs non-target images"
            )
        if self.trigger_mask is not None and self.trigger_mask.shape != self.poisoned_images.shape[:3]:
            raise ValueError(
                f"EvalSet.trigger_mask shape {self.trigger_mask.shape} != poisoned images {self.poisoned_images.shape[:3]}"
            )

    @classmethod
    def from_imagesets(
        cls, clean, poisoned, target: int, attack=None, tolerance: int = 8, name: str = ""
    ) -> EvalSet:
        """Build from a clean test ``ImageSet`` and its triggered non-target version (H3's poisoned test set).

        True labels of the triggered images are their ``original_labels``. The trigger mask is the attack's
        ``trigger_mask`` where it defines one, else the pixels the trigger changed (needs the clean
        counterparts, matched by ``source_index``).
        """
        mask = None
        by_source = {int(s): i for i, s in enumerate(clean.source_index)}
        missing = [int(s) for s in poisoned.source_index if int(s) not in by_source]
        if not missing:
            idx = np.array([by_source[int(s)] for s in poisoned.source_index], dtype=np.int64)
            counterparts = np.asarray(clean.images[idx])
            if attack is not None:
                mask = attack.trigger_mask(counterparts)
            if mask is None:
                mask = changed_pixels(counterparts, np.asarray(poisoned.images), tolerance)
        return cls(
            clean_images=clean.images,
            clean_labels=clean.labels,
            poisoned_images=poisoned.images,
            poisoned_labels=poisoned.original_labels,
            target=int(target),
            trigger_mask=None if mask is None else np.asarray(mask, dtype=bool),
            name=name,
        )

    def subset(self, clean_idx: np.ndarray, poisoned_idx: np.ndarray) -> EvalSet:
        return EvalSet(
            clean_images=np.asarray(self.clean_images[clean_idx]),
            clean_labels=self.clean_labels[clean_idx],
            poisoned_images=np.asarray(self.poisoned_images[poisoned_idx]),
            poisoned_labels=self.poisoned_labels[poisoned_idx],
            target=self.target,
            trigger_mask=None if self.trigger_mask is None else self.trigger_mask[poisoned_idx],
            name=self.name,
        )


    def at_most(self, max_images: int | None, seed: int) -> EvalSet:
        """At most ``max_images`` clean and ``max_images`` triggered images, a seeded sample in their order
        (``None``: all)."""
        if max_images is None:
            return self
        return self.subset(*sample_at_most((len(self.clean_images), len(self.poisoned_images)), max_images, seed))


def sample_at_most(sizes: tuple[int, ...], max_images: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """The one "at most N images" rule: for each of ``sizes`` in order, every index when there are no more than
    ``max_images`` (or ``max_images`` is None), else a sorted sample of ``max_images`` drawn without replacement
    from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)

    def pick(n: int) -> np.ndarray:
        if max_images is None or n <= max_images:
            return np.arange(n)
        return np.sort(rng.choice(n, size=max_images, replace=False))

    return tuple(pick(n) for n in sizes)


def split_eval_sets(clean, triggered, target: int, fraction: float, seed: int, attack=None) -> dict[str, EvalSet]:
    """The one validation / held-out rule (sweeps select on ``val``, reports score ``test``): the clean test split
    is split per class (``data.val_fraction``, ``data.seed``) into ``val`` and ``test``; a triggered test image goes
    to the side its clean source image is on (matched by ``source_index``), so no image, clean or triggered, is
    seen by both. Returns ``{"val": EvalSet, "test": EvalSet}``."""
    return {split: EvalSet.from_imagesets(clean.subset(idx), triggered.subset(trig_idx), target, attack=attack,
                                          name=split)
            for split, (idx, trig_idx) in split_eval_indices(clean, [triggered], fraction, seed).items()}


def eval_inputs(clean, triggered, target: int, split: str, fraction: float, seed: int, *,
                max_images: int | None = None, attack=None) -> EvalSet:
    """What an evaluation of a poisoned test split scores, the one rule of the flows, the CLI, the DVC stages and the
    benchmarks: the ``split`` side of :func:`split_eval_sets` (``val`` to select settings, ``test`` to report;
    ``fraction`` = ``data.val_fraction``, ``seed`` = ``data.seed``), at most ``max_images`` clean and triggered
    images (:meth:`EvalSet.at_most`, the same seed)."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    return split_eval_sets(clean, triggered, target, fraction, seed, attack=attack)[split].at_most(max_images, seed)


def split_eval_indices(clean, triggered: list, fraction: float, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    """:func:`split_eval_sets`'s rule as indices, for callers that keep their own arrays (one clean test set, several
    attacks' triggered sets): ``{"val": (clean_idx, trig_idx_0, trig_idx_1, ...), "test": (...)}``, a triggered
    image on the side of its clean source (``source_index``)."""
    from detoxops.data import stratified_split_indices

    rest, held = stratified_split_indices(clean.labels, fraction, seed)
    out = {}
    for split, idx in (("val", held), ("test", rest)):
        sources = list(set(np.asarray(clean.source_index)[idx].tolist()))
        out[split] = (idx, *(np.flatnonzero(np.isin(np.asarray(t.source_index), sources)) for t in triggered))
    return out


def backdoor_rates(clean_pred: np.ndarray, clean_labels: np.ndarray, poisoned_pred: np.ndarray,
                   poisoned_labels: np.ndarray, target: int) -> dict[str, Any]:
    """CA / PA / ASR (:mod:`detoxops.metrics`, fractions; NaN for a side with no images) and the two counts, from
    the predictions behind a defense: the rates of every evaluation row (:func:`evaluate_defense`, so every sweep
    point) and of ``benchmarks/sampdetox_eval.py``'s rows."""
    return {
        "ca": clean_accuracy(clean_pred, clean_labels) if len(clean_pred) else float("nan"),
        "pa": poisoned_accuracy(poisoned_pred, poisoned_labels) if len(poisoned_pred) else float("nan"),
        "asr": attack_success_rate(poisoned_pred, target) if len(poisoned_pred) else float("nan"),
        "n_clean": int(len(clean_pred)),
        "n_poisoned": int(len(poisoned_pred)),
    }


def map_measures(clean_maps: dict[str, np.ndarray], poisoned_maps: dict[str, np.ndarray],
                 trigger_mask: np.ndarray | None) -> dict[str, float]:
    """What a defense's maps tell beyond the rates: the clean images' mean noise level (``image_level``) and the
    share of them flagged (level > 0), and with the triggered images' ``trigger_mask`` the trigger map's quality
    (:func:`~detoxops.defenses.map_quality.trigger_map_quality`, levels = the noise levels, else the map)."""
    out: dict[str, float] = {}
    if "noise_levels" in clean_maps:
        out["image_level"] = float(clean_maps["noise_levels"].mean())
        out["clean_flagged_fraction"] = float((clean_maps["noise_levels"] > 0).mean())
    if trigger_mask is not None and "trigger_map" in poisoned_maps:
        levels = poisoned_maps.get("noise_levels", poisoned_maps["trigger_map"])
        out.update(trigger_map_quality(poisoned_maps["trigger_map"], levels, trigger_mask))
    return out


def drift_measures(reference_clean_pred: np.ndarray | None, clean_pred: np.ndarray,
                   clean_labels: np.ndarray) -> dict[str, Any]:
    """The label drift of the clean images (:func:`detoxops.defenses.drift.label_drift`: the classifier's labels
    without the defense as reference): ``drift_changed`` / ``drift_inflow`` (fractions), ``drift_class``,
    ``drift_p`` (the binomial test's p-value), ``drift_flagged``. Empty without a reference or clean images."""
    if reference_clean_pred is None or len(clean_pred) == 0:
        return {}
    num_classes = int(max(np.max(reference_clean_pred), np.max(clean_pred), np.max(clean_labels))) + 1
    drift = label_drift(np.asarray(reference_clean_pred), np.asarray(clean_pred), max(num_classes, 2))
    return {"drift_changed": drift.changed, "drift_inflow": drift.top_inflow, "drift_class": drift.top_class,
            "drift_p": drift.p_value, "drift_flagged": drift.flagged}


def evaluate_defense(
    classifier, defense, data: EvalSet, batch_size: int = 256, progress: bool = False, name: str | None = None,
    reference_clean_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """One row: defense name, CA / PA / ASR and counts (:func:`backdoor_rates`: fractions; ``metrics.percent_rates``
    for a displayed table), wall time, images/s, the maps' measures where available (:func:`map_measures`) and,
    given the classifier's labels of the undefended clean images, the label drift (:func:`drift_measures`)."""
    guard = Detoxifier(classifier, defense, batch_size=batch_size, progress=progress)
    start = time.perf_counter()
    clean_pred, clean_maps = guard.predict_with_maps(data.clean_images)
    poisoned_pred, poisoned_maps = guard.predict_with_maps(data.poisoned_images)
    seconds = time.perf_counter() - start
    n_total = len(data.clean_images) + len(data.poisoned_images)
    return {
        "defense": name or getattr(defense, "name", type(defense).__name__),
        **backdoor_rates(clean_pred, data.clean_labels, poisoned_pred, data.poisoned_labels, data.target),
        "seconds": seconds,
        "images_per_s": n_total / seconds if seconds > 0 else float("nan"),
        **map_measures(clean_maps, poisoned_maps, data.trigger_mask),
        **drift_measures(reference_clean_pred, clean_pred, data.clean_labels),
    }


def evaluate_defenses(
    classifier, defenses: dict[str, Any], data: EvalSet, batch_size: int = 256, progress: bool = False
) -> list[dict[str, Any]]:
    """``evaluate_defense`` for every named defense, in order, each with its label drift against the classifier's
    labels of the undefended clean images (one classifier pass, no defense)."""
    reference = Detoxifier(classifier, None, batch_size=batch_size).predict(data.clean_images) \
        if len(data.clean_images) else None
    return [evaluate_defense(classifier, d, data, batch_size, progress, name=n, reference_clean_pred=reference)
            for n, d in defenses.items()]
