"""The Dask task runner gives the same matrix as the thread runner: the tiny benchmark (2 attacks × 2 defenses on
digits) once on Prefect's thread pool and once on a local 2-worker Dask cluster, same params, compared on CA / PA /
ASR. Each run has its own data root and runs dir, so the content-addressed dataset paths — and with them every
cached task's inputs — differ: the Dask run cannot re-use the thread run's cached results and really computes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.platform

TINY = ["victim.epochs=2", "data.train_per_class=20", "data.test_per_class=8", "sampdetox.sampler=ddim"]
ATTACKS = ["badnets", "blended"]
DEFENSES = ["none", "sampdetox"]


def _matrix(root, kind: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    from flows.benchmark import benchmark
    from flows.runners import make_task_runner, worker_api

    overrides = TINY + [f"data.root={root / f'{kind}-data'}", f"tracking.runs_dir={root / f'{kind}-runs'}"]
    runner = make_task_runner(kind, workers=2)
    with worker_api(kind):  # dask: the workers report to the harness's server (PREFECT_API_URL), no server each
        out = benchmark.with_options(task_runner=runner)("params.yaml", overrides, ATTACKS, DEFENSES, 12)
    return {(r["attack"], r["defense"]): (r["ca"], r["pa"], r["asr"]) for r in out["rows"]}


def test_dask_runner_matches_thread_runner(platform_env, tmp_stores, monkeypatch):
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    root = platform_env / "dask-runner"
    tmp_stores(root, "benchmark", dvc_remote=False)
    # both runs compute every task: earlier tests of the session may have cached the same content-addressed inputs
    # (the Dask workers read the environment, the thread runner the temporary setting)
    monkeypatch.setenv("PREFECT_TASKS_REFRESH_CACHE", "true")
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        thread = _matrix(root, "thread")
        dask = _matrix(root, "dask")
    assert sorted(thread) == sorted((a, d) for a in ATTACKS for d in DEFENSES)
    assert dask == thread
    # the Dask run computed its own stages: its data / runs dirs were filled, not the thread run's re-used
    assert any((root / "dask-data").rglob("*")) and (root / "dask-runs" / "benchmark" / "benchmark.md").is_file()
