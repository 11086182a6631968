"""Dataset versions from DVC metadata and the ``version.json`` files next to the data — read only.

Reads plain files (``*.dvc``, ``dvc.lock``, ``<root>/<name>/<hash12>/version.json``); never runs DVC, never
touches the cache or the data itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from detoxops.data.store import written_at

VERSION_COLUMNS = ["dataset", "version", "source", "created", "splits", "images", "poisoned", "dvc_md5", "path"]


def _dvc_hashes(project_root: Path) -> dict[Path, str]:
    """Absolute output path → DVC hash, from every ``*.dvc`` file and ``dvc.lock`` under the project root."""
    hashes: dict[Path, str] = {}

    def record(base: Path, out: dict) -> None:
        if isinstance(out, dict) and out.get("path"):
            value = out.get("md5") or out.get("hash") or out.get("etag")
            if value:
                hashes[(base / out["path"]).resolve()] = str(value)

    for dvc_file in project_root.rglob("*.dvc"):
        if ".dvc" in dvc_file.parent.parts or ".venv" in dvc_file.parts:
            continue
        try:
            for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", []):
                record(dvc_file.parent, out)
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    lock = project_root / "dvc.lock"
    if lock.is_file():
        try:
            for stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values():
                for out in stage.get("outs", []) or []:
                    record(project_root, out)
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    return hashes


def _tracked_hash(path: Path, hashes: dict[Path, str]) -> str | None:
    for candidate in (path, *path.parents):
        if candidate in hashes:
            return hashes[candidate]
    return None


def dataset_versions(data_root: Path, project_root: Path) -> pd.DataFrame:
    """One row per stored dataset version (newest first): name, hash prefix, source, created, split counts,
    number of ground-truth poisoned images and the DVC hash covering it (None when DVC does not track it)."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        return pd.DataFrame(columns=VERSION_COLUMNS)
    hashes = _dvc_hashes(Path(project_root))
    rows = []
    for info_file in data_root.glob("*/*/version.json"):
        try:
            info = json.loads(info_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        splits = info.get("splits") or {}
        rows.append({
            "dataset": info.get("name", info_file.parent.parent.name),
            "version": info_file.parent.name,
            "source": info.get("source"),
            # versions written before 2026-12-06 record it; newer ones are byte-identical wherever they are made
            "created": info.get("created") or written_at(info_file.parent),
            "splits": ", ".join(f"{s} {v.get('count', '?')}" for s, v in splits.items()),
            "images": sum(int(v.get("count", 0)) for v in splits.values()),
            "poisoned": sum(int(v.get("num_poisoned", 0)) for v in splits.values()),
            "dvc_md5": _tracked_hash(info_file.parent.resolve(), hashes),
            "path": str(info_file.parent),
        })
    df = pd.DataFrame(rows, columns=VERSION_COLUMNS)
    return df.sort_values("created", ascending=False, na_position="last").reset_index(drop=True)

