"""The README's main job, end to end on digits at a tiny budget: every stage runs, MLflow holds the runs with
their metrics, artifacts and the registered victim, and a second run re-uses the cached stages."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.platform
APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")

# conftest's tiny_dataelixir budget on 400 images: the smallest at which DataElixir still finds BadNets' target,
# so the demo's ingestion check of its poisoned training set is quarantined (target 0)
DATA = ["data.train_per_class=40", "data.test_per_class=8"]


def test_demo_flow_records_results_and_reuses_cached_stages(platform_env, tiny_dataelixir, tmp_path, monkeypatch):
    from flows.demo import demo

    overrides = tiny_dataelixir + DATA + [f"data.root={tmp_path / 'data'}", f"tracking.runs_dir={tmp_path / 'runs'}",
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
    # the poisoned training set DataElixir scanned, recorded as an ingestion check (nested, no second scan)
    checks = [r for r in runs if r.data.tags.get("detoxops.kind") == "ingestion"]
    assert len(checks) == 1
    check = checks[0]
    assert check.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert check.data.tags["detoxops.status"] == "quarantined" and check.data.tags["detoxops.target_label"] == "0"
    assert check.data.tags["detoxops.dataset"].endswith("-badnets")
    assert {"seconds", "n_flagged", "n_train", "tpr", "fpr"} <= set(check.data.metrics)  # ground-truth flags
    marker = Path(check.data.tags["detoxops.marker"])
    saved = json.loads(marker.read_text())
    assert saved["status"] == "quarantined" and saved["target_label"] == 0
    assert saved["mlflow_run_id"] == check.info.run_id and marker.name == Path(saved["version"]).name + ".check.json"
    from tasks.ingestion_tasks import check_status

    assert check_status(saved["version"])["status"] == "quarantined"
    paths = {a.path for folder in ("anomaly", "decisions", "check")
             for a in client.list_artifacts(check.info.run_id, folder)}
    assert {"anomaly/anomaly_index.png", "anomaly/anomaly_index.json", "decisions/decisions.csv",
            "check/" + marker.name, "check/check.md"} <= paths
    purifier = client.get_model_version_by_alias("detoxops-purifier", "champion")  # what the dashboard's Try it loads
    assert purifier.tags["origin"] and {a.path for a in client.list_artifacts(parent.info.run_id, "purifier")} >= {
        "purifier/config.json", "purifier/diffusion_pytorch_model.safetensors"}
    # SampDetox figure 2 where the dashboard's visibility page reads it: ≤ max_images triggered test images
    fig2_path = "robustness/visibility_robustness.csv"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "robustness")] == [fig2_path]
    fig2 = pd.read_csv(client.download_artifacts(parent.info.run_id, fig2_path, str(tmp_path / "fig2")))
    assert list(fig2.columns) == ["attack", "index", "v", "eta_r"] and set(fig2["attack"]) == {"badnets"}
    assert 0 < len(fig2) <= 16 and fig2["index"].is_unique
    assert ((fig2["v"] > 0) & (fig2["v"] < 0.5)).all()  # a 3×3 corner patch: visible, but far from a new image
    eta = fig2["eta_r"].astype(float).to_numpy()
    assert ((eta >= 0) & ((eta <= 1) | np.isinf(eta))).all()

    # second run: same inputs and code → heavy stages come from Prefect's cache, same table
    again = demo("params.yaml", overrides, max_images=16)
    assert [r["asr"] for r in again] == [r["asr"] for r in table]
    reports = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("detoxops.kind") == "report"]
    assert len(reports) == 2  # the cached figure-2 rows are still logged to the second run
    assert all(client.list_artifacts(r.info.run_id, "robustness") for r in reports)

    # …and the dashboard's visibility page plots them instead of its "nothing recorded" guidance
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DETOXOPS_DATA_ROOT", str(tmp_path / "data"))
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/visibility.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.info and list(at.dataframe[0].value["attack"]) == ["badnets"]

    # …and the Overview lists the demo's ingestion checks (one per run) instead of its guidance
    at.switch_page("pages/overview.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any("ingestion checks" in i.value for i in at.info)
    listed = at.dataframe[0].value
    assert list(listed["verdict"]) == ["quarantined", "quarantined"] and set(listed["target_label"]) == {"0"}
    assert any("quarantined" in e.value and "**0**" in e.value for e in at.error)
    st.cache_data.clear()
