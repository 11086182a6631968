"""The README's main job, end to end on digits at a tiny budget: every stage runs, MLflow holds the runs with
their metrics, artifacts and the registered victim, and a second run re-uses the cached stages."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.platform

TINY = [
    "victim.epochs=3",
    "dataelixir.T=8",
    "dataelixir.rounds=2",
    "dataelixir.keep_last=2",
    "dataelixir.ddim_stride=4",
    "dataelixir.relabel_epochs=1",
    "dataelixir.finetune_epochs=1",
    "data.train_per_class=20",
    "data.test_per_class=8",
]


def test_demo_flow_records_results_and_reuses_cached_stages(platform_env, tmp_path):
    from flows.demo import demo

    overrides = TINY + [f"data.root={tmp_path / 'data'}", f"tracking.runs_dir={tmp_path / 'runs'}",
                        f"tracking.dvc_remote={tmp_path / 'remote'}"]
    table = demo("params.yaml", overrides, max_images=16)
    defenses = [row["defense"] for row in table]
    assert defenses[:3] == ["none", "sampdetox", "faithful"] and defenses[-1].startswith("dataelixir")
    for row in table:
        for key in ("ca", "pa", "asr"):
            assert 0.0 <= row[key] <= 100.0

    client = MlflowClient(mlflow.get_tracking_uri())
    exp = client.get_experiment_by_name("detoxops/demo")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    kinds = {r.data.tags.get("detoxops.kind") for r in runs}
    assert {"report", "defense", "sanitize"} <= kinds
    defense_runs = [r for r in runs if r.data.tags.get("detoxops.kind") == "defense"]
    assert all({"ca", "pa", "asr"} <= set(r.data.metrics) for r in defense_runs)
    parent = next(r for r in runs if r.data.tags.get("detoxops.kind") == "report")
    assert parent.data.tags["detoxops.data_version"]
    assert parent.data.params["attack.name"] == "badnets"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "results")] == ["results/results.csv"]
    assert client.get_model_version_by_alias("detoxops-victim", "champion") is not None

    # second run: same inputs and code → heavy stages come from Prefect's cache, same table
    again = demo("params.yaml", overrides, max_images=16)
    assert [r["asr"] for r in again] == [r["asr"] for r in table]
