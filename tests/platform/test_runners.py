"""flows/runners.py's shared CLI flags: every flow parses the same runner options, and the candidate-worker
count follows --workers, else the Dask worker count, else one thread."""

from __future__ import annotations

import argparse

import pytest

from flows.runners import add_runner_arguments, candidate_workers, make_task_runner


def _parse(argv: list[str], **kw) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_runner_arguments(ap, **kw)
    return ap.parse_args(argv)


@pytest.mark.parametrize(("argv", "expected"), [
    ([], 1),
    (["--runner", "dask"], 2),
    (["--runner", "dask", "--dask-workers", "3"], 3),
    (["--runner", "dask", "--dask-workers", "3", "--workers", "5"], 5),
    (["--workers", "4"], 4),
])
def test_candidate_workers_follow_the_flags(argv, expected):
    assert candidate_workers(_parse(argv, candidate_workers=True)) == expected


def test_bad_flags_are_refused_with_their_name():
    with pytest.raises(SystemExit, match="--workers must be at least 1, got 0"):
        candidate_workers(_parse(["--workers", "0"], candidate_workers=True))
    with pytest.raises(SystemExit):  # argparse: not one of the runners
        _parse(["--runner", "ray"])
    with pytest.raises(ValueError, match="unknown task runner 'ray'"):
        make_task_runner("ray")


def test_flows_without_candidate_work_have_no_workers_flag():
    args = _parse(["--runner", "dask", "--dask-address", "tcp://h:8786"])
    assert (args.runner, args.dask_address) == ("dask", "tcp://h:8786") and not hasattr(args, "workers")


@pytest.mark.parametrize("flow", ["sanitize", "ingestion_check", "benchmark", "sweep"])
def test_every_flow_cli_offers_the_runner_flags(flow, capsys):
    import importlib

    module = importlib.import_module(f"flows.{flow}")
    with pytest.raises(SystemExit):
        module.main(["--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--runner", "--dask-workers", "--dask-address"))
    assert ("--workers" in out.replace("--dask-workers", "")) == (flow in ("sanitize", "ingestion_check"))


def test_local_dask_workers_start_without_dask_malloc_trim_threshold():
    # Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers by default, which roughly doubles a torch
    # forward pass's CPU time there (flows/runners.py); the runner's local cluster must start them without it and
    # keep the one-thread BLAS setting
    import os

    from distributed import Client, LocalCluster

    runner = make_task_runner("dask", workers=1)
    kwargs = {**runner.cluster_kwargs, "n_workers": 1}
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        env = next(iter(client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_",
                                                                           "OMP_NUM_THREADS")}).values()))
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}
