"""What a benchmark result records about how it was made — the command, the code version and the machine — so
every JSON under ``benchmarks/results/`` can be traced and rerun (one helper instead of a copy per script)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(script: str, argv: list[str] | None = None) -> str:
    """The command line that reproduces this run: ``argv`` when a caller (a test, a flow) passed it, else the
    process's own arguments."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *args])


def code_version() -> str:
    """Short Git commit of the checkout, ``+dirty`` when tracked files differ from it ("unknown" outside Git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT, timeout=30).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int | None = None) -> dict:
    """CPU model, cores, the torch threads the run used and the load average when it ended (other jobs on the
    machine change timings: the record says how busy it was)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "load_avg_end": list(os.getloadavg())}


def provenance(script: str, argv: list[str] | None = None, threads: int | None = None) -> dict:
    """``{"command", "code", "machine"}`` for a result record."""
    return {"command": command(script, argv), "code": code_version(), "machine": machine(threads)}


def purifier_sha(folder: str | Path) -> str:
    """A purifier's identity for result keys and caches: sha256 (16 hex digits) of its network config, weights and
    level-map file — not its folder's name, which a shipped purifier keeps when its weights change."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.json")):
        if f.name in ("config.json", "level_map.json", "diffusion_pytorch_model.safetensors"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]
