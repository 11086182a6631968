"""Train victim: ``params.victim`` trained on a (possibly poisoned) training set, scored, saved as safetensors.

The one implementation behind ``detoxops victim train`` (the ``train_victim`` stage of ``dvc.yaml`` and the victim
store's stages) and the Prefect task ``tasks.victim_tasks.train_victim``. ``classifier.json`` records the recipe
(``meta.params``: what DataElixir's relabelling model reuses), the attack, the metrics (with and without test-time
augmentation) and the training history and time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detoxops.config import VictimConfig
from detoxops.data import ImageSet

__all__ = ["VictimOutcome", "train_victim"]


@dataclass(frozen=True)
class VictimOutcome:
    """The saved classifier folder and its metrics (fractions; ``<metric>_tta<level>`` with the other TTA level)."""

    path: Path
    arch: str
    num_classes: int
    metrics: dict[str, float]
    seconds: float
    meta: dict[str, Any] = field(repr=False, default_factory=dict)


def train_victim(train: ImageSet, cfg: VictimConfig, out: str | Path, *, attack=None, clean_test: ImageSet | None = None,
                 triggered: ImageSet | None = None, checkpoint_dir: str | Path | None = None,
                 record: dict[str, Any] | None = None, progress: bool = True) -> VictimOutcome:
    """Build ``cfg.arch`` for ``train``'s images and classes (seeded), train it (``cfg.recipe``; a loop attack's batch
    transform when ``attack`` is one; resumable with ``checkpoint_dir``), score it on ``clean_test`` (CA) and
    ``triggered`` (PA / ASR) at ``cfg.tta`` and the other TTA level, and save it to ``out`` with its training record
    (``record``: the caller's own entries, e.g. the command and the attack record)."""
    from detoxops.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
    from detoxops.models import build_victim, predict, save_classifier, train_classifier

    cfg = cfg.for_image_size(train.images.shape[1], len(train))  # victim.arch auto: the data decides
    model = build_victim(cfg, train.num_classes, train.images.shape[-1], train.images.shape[1])
    wall, cpu = time.perf_counter(), time.process_time()
    history = train_classifier(model, train, cfg, attack=attack, checkpoint_dir=checkpoint_dir, progress=progress)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # CA / PA / ASR both ways (issue #19): without test-time augmentation (what `victim.tta: 0` deploys) and with
    # TTA level 2 (mirror + translate); the plain keys are the deployed model's (victim.tta)
    metrics: dict[str, float] = {}
    other = 2 if cfg.tta != 2 else 0
    if clean_test is not None:
        for level, suffix in ((cfg.tta, ""), (other, f"_tta{other}")):
            metrics[f"ca{suffix}"] = clean_accuracy(predict(model, clean_test.images, tta=level), clean_test.labels)
            if triggered is not None and attack is not None:
                pred = predict(model, triggered.images, tta=level)
                metrics[f"pa{suffix}"] = poisoned_accuracy(pred, triggered.original_labels)
                metrics[f"asr{suffix}"] = attack_success_rate(pred, attack.target)
    extra = dict(record or {})
    meta = {"attack": attack.name if attack else "none", "metrics": metrics, **metrics, "history": history,
            **{k: extra.pop(k) for k in ("command", "seed", "data_source") if k in extra},
            "train_hash": train.content_hash(),
            **({"test_hash": clean_test.content_hash()} if clean_test is not None else {}),
            **extra, "train_seconds": round(wall, 1), "train_cpu_seconds": round(cpu, 1),
            "params": cfg.model_dump(mode="json")}
    save_classifier(model, out, meta=meta)
    return VictimOutcome(path=Path(out), arch=cfg.arch, num_classes=train.num_classes, metrics=metrics,
                         seconds=wall, meta=meta)
