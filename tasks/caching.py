"""Cache policy of every heavy task: inputs + task source + the core library's code version.

Prefect's default policy includes the flow-run id, i.e. caches only live inside one run. Ours drops it, so a
second flow run with the same inputs skips finished work; the inputs carry the data version (dataset paths
are content-addressed ``<name>/<hash12>``) and ``CodeVersion`` changes whenever a file of ``detoxops`` or
``tasks`` changes, so edited code never re-uses a stale result.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from tasks import PROJECT_ROOT

__all__ = ["CodeVersion", "HEAVY_CACHE", "code_digest"]


@functools.cache
def code_digest() -> str:
    """sha256 (16 hex) over the source files of the core package and the task layer."""
    import detoxops

    h = hashlib.sha256()
    roots = [Path(detoxops.__file__).resolve().parent, PROJECT_ROOT / "tasks"]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class CodeVersion(CachePolicy):
    """Key component: the digest of the code the task runs (see :func:`code_digest`)."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        return code_digest()


HEAVY_CACHE = INPUTS + TASK_SOURCE + CodeVersion()
