"""benchmarks/dask_worker_env.py: the malloc threshold Dask exports to its workers multiplies a torch process's page
faults (why flows/runners.py unsets it), measured in fresh subprocesses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import dask_worker_env as bench  # noqa: E402


def test_the_dask_threshold_multiplies_page_faults_and_the_record_says_how_it_ran(tmp_path):
    out = tmp_path / "env.json"
    assert bench.main(["--repeats", "1", "--batch", "8", "--passes", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"command", "code", "machine", "medians", "runs"} <= set(report)
    assert list(report["runs"]) == list(bench.SETTINGS) and all(len(r) == 1 for r in report["runs"].values())
    # a 64-channel 32×32 activation of 8 images is 2 MiB: with the threshold set, every one is mmapped afresh
    assert report["fault_ratio"] > 2


def test_bad_counts_are_refused_by_name(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--passes", "0", "--out", str(tmp_path / "x.json")])
