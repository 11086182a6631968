"""Train a (possibly backdoored) classifier on a dataset version; weights stored as safetensors."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from prefect import task

from tasks.caching import HEAVY_CACHE

__all__ = ["train_victim"]


@task(name="train-victim", cache_policy=HEAVY_CACHE, result_serializer="json")
def train_victim(
    version: str, victim_cfg: dict[str, Any], attack_cfg: dict[str, Any] | None, out_root: str, split: str = "train"
) -> dict[str, Any]:
    """Train ``victim_cfg.arch`` on ``<version>/<split>`` (runs on CUDA when present); loop attacks (WaNet,
    BPP…) get their batch transform. Saved to ``<out_root>/<key>/`` where the key hashes the inputs."""
    from detoxops.config import VictimConfig
    from detoxops.data import load_version
    from detoxops.operations import train_victim as train_operation
    from tasks.progress import task_progress

    cfg = VictimConfig(**victim_cfg)
    splits = load_version(version)
    train = splits[split]
    attack = None
    if attack_cfg is not None:
        from tasks.attack_tasks import build_attack, load_attack_state

        probe = build_attack(attack_cfg, train.image_shape[0], train.num_classes)
        if probe.kind == "loop":
            attack = load_attack_state(probe, version)
    key = hashlib.sha256(json.dumps([version, split, victim_cfg, attack_cfg], sort_keys=True).encode()).hexdigest()[:12]
    out = Path(out_root) / key
    start = time.perf_counter()
    with task_progress("train-victim"):  # the recipe's device ("auto": CUDA when present)
        outcome = train_operation(train, cfg, out, attack=attack, record={"data_source": version}, progress=False)
    seconds = time.perf_counter() - start
    return {"path": str(out), "arch": outcome.arch, "seconds": seconds, "num_classes": train.num_classes}
