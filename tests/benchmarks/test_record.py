"""benchmarks/_record.py: the provenance every benchmark result records (command, code version, machine)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import _record  # noqa: E402


def test_command_reproduces_the_call_it_was_given():
    # a caller's argv (a test, a flow), not pytest's own arguments, and the script's path from the repo root
    cmd = _record.command("/any/where/benchmarks/noise_shortcut.py", ["--n", "40", "--out", "a b.json"])
    assert cmd == "python benchmarks/noise_shortcut.py --n 40 --out 'a b.json'"


def test_provenance_names_the_code_and_the_machine():
    rec = _record.provenance(__file__, ["--x"], threads=1)
    assert set(rec) == {"command", "code", "machine"}
    assert re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?|unknown", rec["code"]), rec["code"]
    m = rec["machine"]
    assert m["threads"] == 1 and m["cores"] >= 1 and len(m["load_avg_end"]) == 3 and m["cpu"]
