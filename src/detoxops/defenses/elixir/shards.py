"""Streaming shard storage: each shard's arrays in one ``.npz`` written atomically (no pickle), so a run
interrupted after k shards resumes at shard k + 1."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np


class ShardStore:
    def __init__(self, folder: str | Path, fingerprint: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "fingerprint.json"
        text = json.dumps(fingerprint, sort_keys=True)
        if meta.is_file() and meta.read_text() != text:
            raise ValueError(
                f"{self.folder}: holds shards of a different run (data, params or models changed); "
                "use another work folder or delete it"
            )
        meta.write_text(text)

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.npz"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def save(self, index: int, **arrays: np.ndarray) -> None:
        tmp = self.folder / f".shard-{index:05d}.{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path(index))

    def load(self, index: int) -> dict[str, np.ndarray]:
        with np.load(self.path(index), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
