"""SampDetox sweep at tiny scale (2 × 1 grid, 2 attacks): val-split child runs, the selection rule, held-out check."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.platform

# Same as test_benchmark_flow.py (same data root / runs dir): when both run in one session, the sweep re-uses the
# benchmark's cached poisoned sets and victims.
TINY = ["victim.epochs=2", "data.train_per_class=20", "data.test_per_class=8", "sampdetox.sampler=ddim"]


def tiny_overrides(root) -> list[str]:
    return TINY + [f"data.root={root / 'bench-data'}", f"tracking.runs_dir={root / 'bench-runs'}"]


def test_grid_parsing_and_validation():
    from detoxops.config import ConfigError
    from flows.sweep import normalise_grid, parse_grid_args
    from tasks.sweep_tasks import grid_points, point_label

    grid = normalise_grid(parse_grid_args(["sampdetox.t2=80,120", "localiser=diff"]))
    assert grid == {"t2": [80, 120], "localiser": ["diff"]}
    points = grid_points(grid)
    assert points == [{"t2": 80, "localiser": "diff"}, {"t2": 120, "localiser": "diff"}]
    assert point_label(points[0]) == "t2=80,localiser=diff"
    with pytest.raises(ConfigError, match="unknown key"):
        normalise_grid({"sampdetox.t9": [1]})
    with pytest.raises(ConfigError, match="localiser"):
        normalise_grid({"localiser": ["nope"]})


def test_sweep_flow_tiny_grid(platform_env):
    from detoxops.defenses.selection import select_setting
    from flows.sweep import sweep

    out = sweep("params.yaml", tiny_overrides(platform_env), grid={"sampdetox.t2": [80, 120], "localiser": ["diff"]},
                attacks=["badnets", "blended"], max_ca_drop=3.0, max_images=12)
    labels = {"t2=80,localiser=diff", "t2=120,localiser=diff"}
    assert out["setting"] in labels
    assert out["overrides"] == [f"sampdetox.{k}={v}" for k, v in out["chosen"].items()]
    # the stated rule, recomputed from the validation rows, picks the same point
    again, _ = select_setting(out["val_rows"], max_ca_drop=3.0)
    assert again["setting"] == out["setting"]
    assert {r["split"] for r in out["val_rows"]} == {"val"}
    assert {r["split"] for r in out["heldout_rows"]} == {"test"}
    assert {r["setting"] for r in out["heldout_rows"]} == {"none", out["setting"]}

    client = MlflowClient(mlflow.get_tracking_uri())
    exp = client.get_experiment_by_name("detoxops/sweep")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{out['run_id']}'")
    points = [c for c in children if c.data.tags["detoxops.kind"] == "sweep-point"]
    assert {c.info.run_name for c in points} == labels | {"none"}
    assert all({"ca", "pa", "asr", "ca_drop", "badnets.asr", "blended.asr"} <= set(c.data.metrics) for c in points)
    assert [c.data.tags["detoxops.chosen"] for c in points].count("true") == 1
    assert len([c for c in children if c.data.tags["detoxops.kind"] == "sweep-heldout"]) == 1
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["detoxops.chosen"] == out["setting"] and "heldout.asr" in parent.data.metrics
