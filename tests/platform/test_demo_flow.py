"""The README's main job, end to end on digits at a tiny budget: every stage runs, MLflow holds the runs with
their metrics, artifacts and the registered victim, and a second run re-uses the cached stages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.platform
ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "dashboards" / "app.py")
DEMO_PARAMS = yaml.safe_load((ROOT / "params.demo.yaml").read_text())


def moved(before: float, after: float) -> str:
    """How the demo's closing lines word a change of a percentage (one decimal, as in the results table)."""
    if f"{before:.1f}" == f"{after:.1f}":
        return f"stayed at {after:.1f}"
    return f"{'fell' if after < before else 'rose'} from {before:.1f} to {after:.1f}"

# conftest's tiny_dataelixir budget on 400 images: the smallest at which DataElixir still finds BadNets' target,
# so the demo's ingestion check of its poisoned training set is quarantined (target 0)
DATA = ["data.train_per_class=40", "data.test_per_class=8"]


def test_demo_flow_records_results_and_reuses_cached_stages(platform_env, tiny_dataelixir, tmp_path, monkeypatch):
    import torch

    from flows.demo import DEMO_THREADS, demo

    overrides = tiny_dataelixir + DATA + [f"data.root={tmp_path / 'data'}", f"tracking.runs_dir={tmp_path / 'runs'}",
                        f"tracking.dvc_remote={tmp_path / 'remote'}"]
    threads_before = torch.get_num_threads()
    table = demo("params.yaml", overrides, max_images=16)
    assert torch.get_num_threads() == threads_before  # the demo's one thread does not leak into the caller
    defenses = [row["defense"] for row in table]
    assert defenses[:3] == ["none", "sampdetox", "faithful"] and defenses[-1].startswith("dataelixir")
    for row in table:  # fractions; the printed table, results.csv and the closing lines show percent
        for key in ("ca", "pa", "asr"):
            assert 0.0 <= row[key] <= 1.0

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
    assert parent.data.tags["detoxops.torch_threads"] == str(DEMO_THREADS)  # what the stages ran with
    assert parent.data.params["attack.name"] == "badnets"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "results")] == ["results/results.csv",
                                                                                       "results/summary.txt"]
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
    # the closing lines: one per defense, in the table's numbers, then the dashboard pages that show them
    summary = client.download_artifacts(parent.info.run_id, "results/summary.txt", str(tmp_path / "summary"))
    lines = Path(summary).read_text().splitlines()
    from detoxops.metrics import percent_rates

    rows = {row["defense"]: percent_rates(row) for row in table}  # the lines' numbers: percent
    none, elixir = rows["none"], rows[defenses[-1]]
    assert [line.split(":")[0] for line in lines[:3]] == [
        "SampDetox (default profile)", "SampDetox (paper's Algorithm 1)", "DataElixir"]
    assert f"ASR on purified triggered inputs {moved(none['asr'], rows['sampdetox']['asr'])};" in lines[0]
    assert f"ASR on purified triggered inputs {moved(none['asr'], rows['faithful']['asr'])};" in lines[1]
    found = re.search(r"^DataElixir: found (\d+) / (\d+) poisoned training samples \(TPR ([\d.]+)\), flagged (\d+) / "
                      r"(\d+) clean ones \(FPR ([\d.]+)\), target 0; ", lines[2])
    assert found, lines[2]
    hit, poisoned, tpr, false, clean, fpr = (float(g) for g in found.groups())
    from detoxops.data import load_version

    truth = np.asarray(load_version(saved["version"])["train"].poisoned, bool)  # the scanned set's ground truth
    assert (poisoned, clean) == (truth.sum(), (~truth).sum()) and hit <= poisoned and false <= clean
    assert tpr == round(elixir["tpr"], 1) == round(100 * hit / poisoned, 1)
    assert fpr == round(elixir["fpr"], 1) == round(100 * false / clean, 1)
    assert f"the retrained model's ASR {moved(none['asr'], elixir['asr'])} (clean accuracy {elixir['ca']:.1f}" in lines[2]
    assert "/defense_results" in lines[3] and "/sample_explorer" in lines[3]
    assert all((Path(APP).parent / "pages" / page).is_file() for page in ("defense_results.py", "sample_explorer.py"))
    # the demo's overlay is applied under the test's overrides (params.demo.yaml's SampDetox sampler, not
    # params.yaml's; the test's --set DataElixir stride over the overlay's)
    assert parent.data.params["sampdetox.sampler"] == DEMO_PARAMS["sampdetox"]["sampler"] == "ddim"
    assert parent.data.params["dataelixir.ddim_stride"] == "8"
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

    # …and the Defense results page the closing lines point to shows both defenses' runs (no guidance notes)
    at.switch_page("pages/defense_results.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.info, [i.value for i in at.info]
    assert [h.value for h in at.header] == ["Attack × defense (CA / PA / ASR)",
                                            "DataElixir sanitisation (TPR / FPR / ACC / ASR)"]
    st.cache_data.clear()


# ------------------------------------------------------------------ the closing lines (fast)
def test_defense_summaries_say_what_each_defense_showed(tmp_path):
    from flows.demo import decision_counts, defense_summaries

    decisions = tmp_path / "decisions.csv"
    # 3 poisoned (2 flagged), 5 clean (1 flagged)
    decisions.write_text("index,flagged,poisoned_true\n" + "".join(
        f"{i},{f},{p}\n" for i, (f, p) in enumerate([(1, 1), (1, 1), (0, 1), (1, 0), (0, 0), (0, 0), (0, 0), (0, 0)])))
    counts = decision_counts(decisions)
    assert counts == {"poisoned": 3, "found": 2, "clean": 5, "false": 1}
    assert decision_counts(tmp_path / "absent.csv") is None

    # the demo's table holds fractions; its closing lines show percent
    table = [{"defense": "none", "ca": 0.955, "asr": 0.95}, {"defense": "sampdetox", "ca": 0.94, "asr": 0.09},
             {"defense": "faithful", "ca": 0.955, "asr": 0.965},
             {"defense": "dataelixir (retrained)", "ca": 0.972, "asr": 0.005, "tpr": 2 / 3, "fpr": 0.2}]
    lines = defense_summaries(table, {"target_label": 0}, counts)
    assert lines[0] == ("SampDetox (default profile): the victim's ASR on purified triggered inputs fell from 95.0 "
                        "to 9.0; clean accuracy fell from 95.5 to 94.0.")
    assert lines[1] == ("SampDetox (paper's Algorithm 1): the victim's ASR on purified triggered inputs rose from "
                        "95.0 to 96.5; clean accuracy stayed at 95.5.")
    assert lines[2] == ("DataElixir: found 2 / 3 poisoned training samples (TPR 66.7), flagged 1 / 5 clean ones "
                        "(FPR 20.0), target 0; the retrained model's ASR fell from 95.0 to 0.5 (clean accuracy "
                        "97.2, 95.5 without defense).")
    assert "http://localhost:8501/defense_results" in lines[3] and len(lines) == 4
    # every target DataElixir took, not only the first (a second, false target explains clean samples flagged)
    two = defense_summaries(table, {"target_label": 0, "anomaly_index": {"target_labels": [0, 3]}}, counts)[2]
    assert "(FPR 20.0), targets 0, 3; the retrained model's ASR" in two
    nothing = defense_summaries(table, {"target_label": None, "n_flagged": 0}, counts)[2]
    assert nothing.startswith("DataElixir: found no backdoor target label (the training set is kept as is); ")
