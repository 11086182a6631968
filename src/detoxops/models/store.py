"""A victim store: trained classifiers kept under one folder and loaded by name (``cifar10-fast/badnets``).

The repository commits its CIFAR-10 victims under ``victims/`` (fp16 weights, a few MB each, with their training
record), so the SampDetox and DataElixir experiments start from them instead of retraining. The store folder is
``$DETOXOPS_VICTIMS`` when set, else ``victims/`` under the working directory; a reference that is an existing
folder is always used as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "STORE_ENV",
    "victim_store",
    "resolve_classifier_path",
    "list_victims",
    "store_attack_state",
    "half_precision_safetensors",
    "victim_attack",
]

STORE_ENV = "DETOXOPS_VICTIMS"
_CONFIG = "classifier.json"


def victim_store() -> Path:
    """The folder names are looked up in."""
    return Path(os.environ.get(STORE_ENV) or "victims")


def list_victims(store: str | Path | None = None) -> list[dict[str, Any]]:
    """Every classifier under ``store`` (default :func:`victim_store`): name (its path relative to the store),
    arch and the metrics of its training record."""
    root = Path(store) if store is not None else victim_store()
    found = []
    for config in sorted(root.glob(f"**/{_CONFIG}")):
        spec = json.loads(config.read_text())
        meta = spec.get("meta", {})
        found.append({"name": config.parent.relative_to(root).as_posix(), "arch": spec.get("arch"),
                      "ca": meta.get("ca"), "asr": meta.get("asr"), "attack": meta.get("attack")})
    return found


def resolve_classifier_path(ref: str | Path, store: str | Path | None = None) -> Path:
    """``ref`` itself when it is an existing folder, else ``<store>/<ref>``; a clear error lists the store's
    names when neither exists."""
    path = Path(ref)
    if path.exists():
        return path
    root = Path(store) if store is not None else victim_store()
    named = root / str(ref)
    if (named / _CONFIG).is_file():
        return named
    names = [v["name"] for v in list_victims(root)] if root.is_dir() else []
    hint = f"; victims in {root}: {', '.join(names)}" if names else f" (no victim store at {root}; set {STORE_ENV})"
    raise FileNotFoundError(f"{ref}: no such classifier folder or victim name{hint}")


_ATTACK_DIR = "attack"


def store_attack_state(victim_dir: str | Path, attack_run: str | Path) -> Path:
    """Copy the attack record of ``attack_run`` (a `detoxops attack run` folder: ``attack.json`` and, for a fitted
    trigger, ``state/``) into ``<victim_dir>/attack/``, atomically, so the victim's triggered test set can be
    regenerated wherever the victim travels (:func:`victim_attack`).

    Only what the test trigger needs travels: an attack whose state is training-only (LC's adversarial images,
    15 MB at CIFAR-10 scale) keeps no ``state/``, and the float tensors of a fitted trigger (SSBA's StegaStamp,
    the Input-Aware / LIRA generators) are stored in fp16 like the victims' weights (they load back into fp32
    networks; the effect on the triggers is measured by ``benchmarks/attack_state_precision.py``), keeping only the
    part the trigger reads (``Attack.trigger_state_prefixes``: SSBA's encoder, not its decoder)."""
    import shutil

    from detoxops.attacks import registry
    from detoxops.fileio import atomic_dir

    src = Path(attack_run)
    if not (src / "attack.json").is_file():
        raise FileNotFoundError(f"{src}: not an attack output folder (no attack.json)")
    attack_cls = registry.get(json.loads((src / "attack.json").read_text())["name"])
    with atomic_dir(Path(victim_dir) / _ATTACK_DIR, overwrite=True) as tmp:
        shutil.copy2(src / "attack.json", tmp / "attack.json")
        if (src / "state").is_dir() and attack_cls.trigger_uses_state:
            shutil.copytree(src / "state", tmp / "state")
            for file in (tmp / "state").rglob("*.safetensors"):
                half_precision_safetensors(file, keep_prefixes=attack_cls.trigger_state_prefixes)
    return Path(victim_dir) / _ATTACK_DIR


def half_precision_safetensors(path: Path, keep_prefixes: tuple[str, ...] | None = None) -> None:
    """Rewrite ``path`` with its fp32 / fp64 tensors as fp16 (integer tensors and the metadata unchanged), keeping
    only the keys that start with one of ``keep_prefixes`` when given."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        keys = [k for k in f.keys() if keep_prefixes is None or k.startswith(keep_prefixes)]
        tensors = {k: f.get_tensor(k) for k in keys}
    tensors = {k: v.half() if v.dtype in (torch.float32, torch.float64) else v for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def victim_attack(ref: str | Path, store: str | Path | None = None):
    """The attack a stored victim was trained with (rebuilt from ``<victim>/attack/``, fitted state included), or
    None for a clean victim. Its ``poison_test_arrays`` regenerates the victim's triggered test set."""
    folder = resolve_classifier_path(ref, store) / _ATTACK_DIR
    if not (folder / "attack.json").is_file():
        return None
    from detoxops.attacks import registry

    return registry.from_record(folder)
