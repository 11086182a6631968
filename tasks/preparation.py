"""Inputs of the multi-attack flows (``flows.benchmark``, ``flows.sweep``): the ingested dataset, the purifier and,
per attack, a poisoned set and its victim, all as the cached tasks of ``tasks/``."""

from __future__ import annotations

from typing import Any

from tasks import project_path

__all__ = ["attack_config", "prepare_attacks"]


def attack_config(params, name: str) -> dict[str, Any]:
    """``params.attack`` with another attack name (target, ratio, seed and per-attack options kept)."""
    from detoxops.config import AttackConfig

    return AttackConfig(**{**params.attack.model_dump(mode="json"), "name": name}).model_dump(mode="json")


def prepare_attacks(params, attacks: list[str]) -> dict[str, Any]:
    """Ingest, purifier, and a poisoned set + victim per attack (submitted to the running flow's task runner, in
    waves: every poison, then every victim). Returns ``{"ingested", "purifier", "attacks": {name: {...}}}``."""
    from tasks.attack_tasks import poison_dataset
    from tasks.data_tasks import ingest_dataset
    from tasks.purifier_tasks import get_purifier
    from tasks.victim_tasks import train_victim

    data_root = str(project_path(params.data.root))
    runs_root = project_path(params.tracking.runs_dir)
    ingested = ingest_dataset(params.data.source, params.data.model_dump(mode="json"), data_root)
    purifier_f = get_purifier.submit(params.diffusion.model_dump(mode="json"), ingested["path"],
                                     str(runs_root / "purifiers"))
    cfgs = {name: attack_config(params, name) for name in attacks}
    poison_f = {name: poison_dataset.submit(ingested["path"], cfg, data_root) for name, cfg in cfgs.items()}
    poisoned = {name: f.result() for name, f in poison_f.items()}
    victim_cfg = params.victim.model_dump(mode="json")
    victim_f = {name: train_victim.submit(poisoned[name]["path"], victim_cfg, cfgs[name], str(runs_root / "victims"))
                for name in attacks}
    out = {name: {"attack_cfg": cfgs[name], "poisoned": poisoned[name], "victim": victim_f[name].result()}
           for name in attacks}
    return {"ingested": ingested, "purifier": purifier_f.result(), "attacks": out}
