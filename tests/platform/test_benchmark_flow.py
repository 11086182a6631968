"""The attack × defense matrix at tiny scale (2 attacks × 2 defenses on digits): rows, markdown, MLflow runs."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.platform

# Shared with test_sweep_flow.py: same data root / runs dir / overrides → the sweep re-uses these cached stages.
TINY = [
    "victim.epochs=2",
    "data.train_per_class=20",
    "data.test_per_class=8",
    "sampdetox.sampler=ddim",
]


def tiny_overrides(root) -> list[str]:
    return TINY + [f"data.root={root / 'bench-data'}", f"tracking.runs_dir={root / 'bench-runs'}"]


def test_matrix_markdown_layout():
    from flows.benchmark import matrix_markdown

    rows = [{"attack": "a", "defense": "none", "ca": 0.90, "pa": 0.10, "asr": 0.88},  # fractions, shown in %
            {"attack": "a", "defense": "sd", "ca": 0.85, "pa": 0.60, "asr": 0.20},
            {"attack": "b", "defense": "none", "ca": 0.92, "pa": 0.05, "asr": 0.95}]
    md = matrix_markdown(rows, ["a", "b"], ["none", "sd"]).splitlines()
    assert md[0] == "| Attack | none CA | none PA | none ASR | sd CA | sd PA | sd ASR |"
    assert md[2] == "| a | 90.0 | 10.0 | 88.0 | 85.0 | 60.0 | 20.0 |"
    assert md[3] == "| b | 92.0 | 5.0 | 95.0 | - | - | - |"
    assert md[4] == "| **mean** | 91.0 | 7.5 | 91.5 | 85.0 | 60.0 | 20.0 |"


def test_benchmark_flow_tiny_matrix(platform_env):
    from flows.benchmark import benchmark

    out = benchmark("params.yaml", tiny_overrides(platform_env), attacks=["badnets", "blended"],
                    defenses=["none", "sampdetox"], max_images=12)
    rows = out["rows"]
    assert sorted((r["attack"], r["defense"]) for r in rows) == [
        ("badnets", "none"), ("badnets", "sampdetox"), ("blended", "none"), ("blended", "sampdetox")]
    for r in rows:
        assert all(0.0 <= r[m] <= 1.0 for m in ("ca", "pa", "asr"))  # fractions; the markdown shows percent
    assert out["markdown"].splitlines()[0].startswith("| Attack | none CA")
    assert (platform_env / "bench-runs" / "benchmark" / "benchmark.md").read_text().strip() == out["markdown"]

    client = MlflowClient(mlflow.get_tracking_uri())
    exp = client.get_experiment_by_name("detoxops/benchmark")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{out['run_id']}'")
    assert len(children) == 4
    assert {(c.data.tags["detoxops.attack"], c.data.tags["detoxops.defense"]) for c in children} == {
        (r["attack"], r["defense"]) for r in rows}
    assert all({"ca", "pa", "asr"} <= set(c.data.metrics) for c in children)
    arts = {a.path for a in client.list_artifacts(out["run_id"], "results")}
    assert {"results/benchmark.md", "results/benchmark.csv"} <= arts


def test_task_runner_flag():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import make_task_runner, worker_api

    assert isinstance(make_task_runner("thread"), ThreadPoolTaskRunner)
    assert isinstance(make_task_runner("dask", workers=1), DaskTaskRunner)  # the cluster starts with the flow
    assert isinstance(make_task_runner("dask", address="tcp://127.0.0.1:8786"), DaskTaskRunner)
    with pytest.raises(ValueError, match="unknown task runner"):
        make_task_runner("ray")
    with worker_api("thread") as url:
        assert url is None
