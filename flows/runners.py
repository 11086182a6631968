"""Task runners selectable by a flag in the benchmark / sweep / sanitize / ingestion-check flows
(``--runner thread|dask``), and the one piece of work the flows split over them themselves: DataElixir's candidate
shards (:func:`candidates_in_parallel`).

* ``thread`` (default): Prefect's ``ThreadPoolTaskRunner`` — submitted tasks run in threads of the flow process.
* ``dask``: ``prefect_dask.DaskTaskRunner`` — a temporary ``LocalCluster`` (``--dask-workers`` processes, one
  thread each), or an existing scheduler with ``--dask-address tcp://host:8786``. Workers import ``tasks``
  and ``detoxops``, so they need the project on ``PYTHONPATH`` (set here for a local cluster) and the same
  environment; tasks exchange only paths and small dicts, and MLflow logging stays in the flow process.
  The local cluster's workers start without ``MALLOC_TRIM_THRESHOLD_`` (see :func:`torch_friendly_worker_env`).

Without ``PREFECT_API_URL`` every Dask worker process would start its own temporary Prefect server (~20 s
each, all on one SQLite file); :func:`worker_api` starts one first and exports its URL to the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from tasks import PROJECT_ROOT

__all__ = ["RUNNERS", "add_runner_arguments", "candidate_workers", "make_task_runner", "worker_api",
           "candidates_in_parallel", "torch_friendly_worker_env"]

RUNNERS = ("thread", "dask")


def add_runner_arguments(ap: argparse.ArgumentParser, *, candidate_workers: bool = False) -> None:
    """The runner flags every flow CLI shares (``--runner``, ``--dask-workers``, ``--dask-address``), plus
    ``--workers`` (parallel DataElixir candidate tasks) for the flows that sanitise."""
    if candidate_workers:
        ap.add_argument("--workers", type=int, default=None,
                        help="parallel DataElixir candidate tasks (default: --dask-workers or 2 on dask, 1 on thread)")
    ap.add_argument("--runner", choices=RUNNERS, default="thread", help="Prefect task runner")
    ap.add_argument("--dask-workers", type=int, default=None, help="local Dask worker processes (default 2)")
    ap.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")


def candidate_workers(args: argparse.Namespace) -> int:
    """Parallel candidate tasks from :func:`add_runner_arguments`' flags: ``--workers`` if given, else one per
    Dask worker (2 by default) on dask and 1 on threads (the candidate stage already uses every core)."""
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}")
    return args.workers or ((args.dask_workers or 2) if args.runner == "dask" else 1)


def make_task_runner(kind: str = "thread", workers: int | None = None, address: str | None = None):
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # spawned workers import tasks/
        torch_friendly_worker_env()
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": ":0"})
    raise ValueError(f"unknown task runner {kind!r}; choose one of {', '.join(RUNNERS)}")


def torch_friendly_worker_env() -> None:
    """Start local Dask workers without Dask's default ``MALLOC_TRIM_THRESHOLD_=65536`` (the nanny's
    ``pre-spawn-environ``; its one-thread BLAS / OpenMP settings stay). Setting any glibc malloc threshold turns off
    glibc's dynamic mmap threshold, so every tensor above 128 KiB is mmapped and unmapped again and its pages faulted
    in afresh: measured on this 2-core CPU (``benchmarks/dask_worker_env.py``), a UNet forward pass took 10× the page
    faults and 2.5× the CPU time, most of the extra system time, which made two Dask workers slower than one
    thread-runner process (docs/dataelixir.md, "Full-scan cost through the flow"). Workers of a cluster started elsewhere (``--dask-address``) need the same
    in their own Dask config: ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null``."""
    import dask

    # None unsets a pre-spawn variable (distributed.nanny._get_env_variables); set for the process, so the
    # nannies the runner creates later, inside the flow run, read it
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


@contextlib.contextmanager
def worker_api(kind: str = "thread"):
    """For ``dask``: make sure worker processes report to the flow's Prefect API (``PREFECT_API_URL`` in the
    environment they inherit), starting one temporary server when none is configured. No-op for ``thread``."""
    if kind != "dask":
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, server = PREFECT_API_URL.value(), None
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        url = server.api_url
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        if server is not None:
            server.stop()


def candidates_in_parallel(version: str, victim: str, purifier: str, params, out_root: str, workers: int) -> list[int]:
    """DataElixir's candidate shards of ``version`` submitted as ``workers`` tasks over disjoint shard lists
    (round-robin, so the short last shard does not leave one worker idle), on the flow's task runner; returns the
    shards computed. The ``dataelixir`` task that follows (same arguments) finds them stored and only loads them.
    ``workers`` <= 1: nothing here, the ``dataelixir`` task computes every shard itself."""
    from tasks.sanitize_tasks import candidate_shards, shard_count_task

    if workers <= 1:
        return []
    cfg = params.dataelixir.model_dump(mode="json")
    n = shard_count_task(version, cfg)
    futures = [candidate_shards.submit(version, victim, purifier, cfg, out_root, list(range(i, n, workers)),
                                       precision=params.diffusion.precision) for i in range(min(workers, n))]
    return sorted(k for f in futures for k in f.result())
