"""Turn a clean train / test pair of :class:`~detoxops.data.ImageSet` into an attack's datasets.

* **poisoned train**: every sample kept in order, ``images`` / ``labels`` after poisoning, ``poisoned`` = the
  ground-truth flag, ``original_labels`` and ``source_index`` carried over from the input. Dirty-label attacks
  relabel their poisoned samples to the target; clean-label ones (SIG, LC) keep the labels. Loop attacks (WaNet,
  BPP, …) give BackdoorBench's snapshot (see :mod:`detoxops.attacks.loop`): their cross / negative samples are
  modified but keep their label and are *not* flagged; ``meta['attack']['snapshot']`` records the counts and
  ``attack.snapshot_indices(n)`` regenerates the positions.
* **triggered test**: the non-target test images only (the ASR / PA set, 9000 on CIFAR-10) with the test-time
  trigger; ``labels`` = the attack target (what the backdoor wants, as BackdoorBench's ``bd_test``),
  ``original_labels`` = the true labels (PA / RA are measured against them), ``poisoned`` all True,
  ``source_index`` = their index in the source test split.

Both carry ``meta['attack']`` = ``attack.describe()`` plus the counts, and an entry in ``meta['transforms']``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from detoxops.attacks.base import Attack, jpeg_roundtrip

if TYPE_CHECKING:
    from detoxops.data import ImageSet


def _check_pair(attack: Attack, ds: ImageSet, split: str) -> None:
    if ds.num_classes != attack.num_classes:
        raise ValueError(f"{split} set has {ds.num_classes} classes, attack {attack.name!r} was built for "
                         f"{attack.num_classes}")
    if len(ds) and ds.images.shape[1:3] != (attack.image_size, attack.image_size):
        raise ValueError(f"{split} images are {ds.images.shape[1]}x{ds.images.shape[2]}, attack "
                         f"{attack.name!r} was built for {attack.image_size}x{attack.image_size}")


def poison_train(attack: Attack, train: ImageSet) -> ImageSet:
    """The poisoned training set (see the module docstring)."""
    _check_pair(attack, train, "train")
    if attack.needs_fit and not attack.is_fitted:
        raise ValueError(f"attack {attack.name!r} must be fitted before poisoning (call attack.fit(...))")
    images, labels, flags = attack.poison_train_arrays(np.asarray(train.images), train.labels)
    if attack.jpeg_quality is not None:  # the changed images stored as JPEG, like the rest of a JPEG dataset
        changed = np.flatnonzero(np.any(images != np.asarray(train.images), axis=(1, 2, 3)))
        images[changed] = jpeg_roundtrip(images[changed], attack.jpeg_quality)
    info = attack.describe() | {"split": "train", "num_poisoned": int(flags.sum()),
                                "num_relabelled": int((labels != train.labels).sum())}
    if attack.kind == "loop" and hasattr(attack, "snapshot_indices"):
        bd, cross = attack.snapshot_indices(len(train))
        info["snapshot"] = {"rule": "per block of batch_size consecutive indices: first num_bd backdoored, "
                                    "next num_cross cross/negative (true label)",
                            "num_bd": int(len(bd)), "num_cross": int(len(cross))}
    out = train.replace(images=images, labels=labels, poisoned=flags,
                        original_labels=train.original_labels.copy(), source_index=train.source_index.copy())
    out.meta["attack"] = info
    out.meta.setdefault("transforms", []).append({"attack": attack.name, "split": "train"})
    return out


def trigger_test(attack: Attack, test: ImageSet) -> ImageSet:
    """The triggered non-target test set (see the module docstring)."""
    from detoxops.data import ImageSet

    _check_pair(attack, test, "test")
    if attack.needs_fit and attack.trigger_uses_state and not attack.is_fitted:
        raise ValueError(f"attack {attack.name!r} must be fitted before poisoning (call attack.fit(...))")
    images, _true, keep = attack.poison_test_arrays(np.asarray(test.images), test.labels)
    meta = {k: v for k, v in test.meta.items() if k != "attack"}
    meta["attack"] = attack.describe() | {"split": "test", "num_triggered": int(len(keep))}
    meta.setdefault("transforms", []).append({"attack": attack.name, "split": "test",
                                              "kept": "labels != target"})
    return ImageSet(
        images=images,
        labels=np.full(len(keep), attack.target, dtype=np.int64),
        class_names=list(test.class_names),
        source_index=test.source_index[keep].copy(),
        original_labels=test.original_labels[keep].copy(),
        poisoned=np.ones(len(keep), dtype=bool),
        meta=meta,
    )


def poison_datasets(attack: Attack, train: ImageSet, test: ImageSet) -> tuple[ImageSet, ImageSet]:
    """``(poisoned_train, triggered_test)`` for ``attack`` (fitted first where it needs it)."""
    return poison_train(attack, train), trigger_test(attack, test)
